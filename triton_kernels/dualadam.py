"""InvAdam / DualAdam, one launch per tensor list. Mirrors fused_optim/reference/dualadam.py
(dualadam_step, dualadam_blend_weight) and csrc/include/fused_optim/math/dualadam.h.

Bytes per element with fp32 params and states: reads p, g, m, v and writes p, m, v: 28 B.
"""
import triton
import triton.language as tl

from .param_modes import load_param, stochastic_high_key, store_param
from .multi_tensor import (as_stored, block_coords, column_ptr, div, active_numel, load_math, pow_int,
                           sqrt, store_rounded, unscaled)


@triton.jit
def dualadam_blend_weight(t, switch_rate):
    """Reference: dualadam_blend_weight, in fp64 on the device: alpha = max(0, 1 - t xi) and
    blend = alpha >= xi. The launch disables fp contraction, so 1 - t*xi rounds twice as in
    python (a fused multiply-add would flip e.g. xi = 0.05, t = 19)."""
    alpha = tl.maximum(1.0 - t * switch_rate, 0.0)
    return alpha, alpha >= switch_rate


@triton.jit
def dualadam_math(p, g, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, decay, bc1, bc2,
                  alpha, one_minus_alpha, blend, S: tl.constexpr, MATH: tl.constexpr,
                  APPLY_DECAY: tl.constexpr):
    """Reference: dualadam_step's per-tensor body, statement by statement, on registers of the
    math dtype; states are taken as stored (rounded to S) before later statements read them."""
    if APPLY_DECAY:
        p = p * decay  # decoupled (authors' code)
    m = as_stored(m * beta1 + one_minus_beta1 * g, S, MATH)
    v = as_stored(v * beta2 + one_minus_beta2 * g * g, S, MATH)
    mhat = div(m, bc1, MATH)
    d = sqrt(div(v, bc2, MATH), MATH) + eps
    adam = div(mhat, d, MATH)
    # eps sits in the inverse term too (authors' code; the paper writes mhat sqrt(vhat))
    update = tl.where(blend, (mhat * d) * alpha + one_minus_alpha * adam, adam)
    p = p + (-lr) * update
    return p, m, v


@triton.jit
def _dualadam_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, lr, beta1, beta2, one_minus_beta1,
                    one_minus_beta2, eps, decay, bc1, bc2, alpha, one_minus_alpha, blend, NCOLS: tl.constexpr,
                    MODE: tl.constexpr, EXTRA: tl.constexpr,
                    P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, APPLY_DECAY: tl.constexpr,
                    HAS_GRAD_SCALE: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr):
    g_ptr = column_ptr(table_ptr, row, 1, NCOLS, P, ALIGNED)
    m_ptr = column_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED)
    v_ptr = column_ptr(table_ptr, row, 3, NCOLS, S, ALIGNED)
    p = load_param(table_ptr, row, offs, mask, NCOLS, EXTRA, P, MATH, MODE, ALIGNED, FULL)
    g = unscaled(load_math(g_ptr, offs, mask, FULL, MATH), grad_scale_ptr, HAS_GRAD_SCALE, MATH)
    m = load_math(m_ptr, offs, mask, FULL, MATH)
    v = load_math(v_ptr, offs, mask, FULL, MATH)
    p, m, v = dualadam_math(p, g, m, v, lr, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, decay, bc1,
                            bc2, alpha, one_minus_alpha, blend, S, MATH, APPLY_DECAY)
    store_param(table_ptr, row, offs, p, mask, high_key, NCOLS, EXTRA, P, MODE, ALIGNED, FULL)
    store_rounded(m_ptr, offs, m, mask, FULL, S)
    store_rounded(v_ptr, offs, v, mask, FULL, S)


@triton.jit
def dualadam_kernel(table_ptr, blocks_ptr, global_step_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64,
                    beta1: tl.float64, beta2: tl.float64, one_minus_beta1: tl.float64,
                    one_minus_beta2: tl.float64, eps: tl.float64, decay: tl.float64,
                    switch_rate: tl.float64, NCOLS: tl.constexpr, MODE: tl.constexpr, EXTRA: tl.constexpr,
                    P: tl.constexpr, S: tl.constexpr,
                    MATH: tl.constexpr, APPLY_DECAY: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                    HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Table row: p, g, m, v, [master/remainder or key: MODE], numel. The step is the
    optimizer's global one (a device scalar)."""
    row, start = block_coords(blocks_ptr, BLOCK)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    t = tl.load(global_step_ptr).to(tl.float64) + 1.0
    alpha, blend = dualadam_blend_weight(t, switch_rate)
    # bias corrections with the GLOBAL step, fp64 then rounded (dualadam.h: dualadam_hyper)
    bc1 = (1.0 - pow_int(beta1, t)).to(MATH)
    bc2 = (1.0 - pow_int(beta2, t)).to(MATH)
    one_minus_alpha = (1.0 - alpha).to(MATH)
    numel = active_numel(numel, found_inf_ptr, HAS_FOUND_INF)
    if MODE == 3:  # stochastic rounding's key of this block (param_modes.py)
        high_key = stochastic_high_key(table_ptr, row, start, t, EXTRA, NCOLS)
    else:
        high_key = tl.full((), 0, tl.uint32)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    if start + BLOCK <= numel:
        _dualadam_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, lr.to(MATH), beta1.to(MATH),
                        beta2.to(MATH),
                        one_minus_beta1.to(MATH), one_minus_beta2.to(MATH), eps.to(MATH), decay.to(MATH), bc1,
                        bc2, alpha.to(MATH), one_minus_alpha, blend, NCOLS, MODE, EXTRA, P, S, MATH, APPLY_DECAY,
                        HAS_GRAD_SCALE, ALIGNED, True)
    else:
        _dualadam_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, lr.to(MATH), beta1.to(MATH),
                        beta2.to(MATH),
                        one_minus_beta1.to(MATH), one_minus_beta2.to(MATH), eps.to(MATH), decay.to(MATH), bc1,
                        bc2, alpha.to(MATH), one_minus_alpha, blend, NCOLS, MODE, EXTRA, P, S, MATH, APPLY_DECAY,
                        HAS_GRAD_SCALE, ALIGNED, False)
