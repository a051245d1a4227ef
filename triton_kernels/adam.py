"""Adam / AdamW, one launch per tensor list. Mirrors fused_optim/reference/adam.py (adam_step)
and csrc/include/fused_optim/math/adam.h.

Bytes per element with fp32 params and states: reads p, g, m, v and writes p, m, v: 28 B
(+8 B with amsgrad: read and write vmax).
"""
import triton
import triton.language as tl

from .param_modes import load_param, stochastic_high_key, store_param
from .multi_tensor import (as_stored, block_coords, column_ptr, div, active_numel, load_math, pow_int,
                           sqrt, step_of, store_rounded, unscaled)


@triton.jit
def adam_math(p, g, m, v, vmax, step_size, bc2_sqrt, beta2, one_minus_beta1, one_minus_beta2, eps,
              weight_decay, decay, S: tl.constexpr, MATH: tl.constexpr, AMSGRAD: tl.constexpr,
              MAXIMIZE: tl.constexpr, APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr):
    """Reference: adam_step, statement by statement, on registers of the math dtype. Each state
    is taken as stored (rounded to S) before later statements read it, as in the reference."""
    if MAXIMIZE:
        g = -g
    if APPLY_DECAY:
        p = p * decay  # AdamW: p *= 1 - lr wd
    if APPLY_L2:
        g = g + weight_decay * p  # Adam: g += wd p
    m = as_stored(m + one_minus_beta1 * (g - m), S, MATH)  # m.lerp_(g, 1 - beta1)
    v = as_stored(v * beta2 + one_minus_beta2 * g * g, S, MATH)
    second = v
    if AMSGRAD:
        vmax = tl.where(vmax > v, vmax, v)  # torch.maximum; exact, already in S
        second = vmax
    denom = div(sqrt(second, MATH), bc2_sqrt, MATH) + eps
    p = p + div((-step_size) * m, denom, MATH)  # addcdiv_: self + value * t1 / t2
    return p, m, v, vmax


@triton.jit
def _adam_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, step_size, bc2_sqrt, beta2, one_minus_beta1,
                one_minus_beta2, eps, weight_decay, decay, NCOLS: tl.constexpr, MODE: tl.constexpr,
                EXTRA: tl.constexpr, P: tl.constexpr,
                S: tl.constexpr, MATH: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
                APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                ALIGNED: tl.constexpr, FULL: tl.constexpr):
    g_ptr = column_ptr(table_ptr, row, 1, NCOLS, P, ALIGNED)
    m_ptr = column_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED)
    v_ptr = column_ptr(table_ptr, row, 3, NCOLS, S, ALIGNED)
    p = load_param(table_ptr, row, offs, mask, NCOLS, EXTRA, P, MATH, MODE, ALIGNED, FULL)
    g = unscaled(load_math(g_ptr, offs, mask, FULL, MATH), grad_scale_ptr, HAS_GRAD_SCALE, MATH)
    m = load_math(m_ptr, offs, mask, FULL, MATH)
    v = load_math(v_ptr, offs, mask, FULL, MATH)
    if AMSGRAD:
        vmax_ptr = column_ptr(table_ptr, row, 4, NCOLS, S, ALIGNED)
        vmax = load_math(vmax_ptr, offs, mask, FULL, MATH)
    else:
        vmax = v
    p, m, v, vmax = adam_math(p, g, m, v, vmax, step_size, bc2_sqrt, beta2, one_minus_beta1,
                              one_minus_beta2, eps, weight_decay, decay, S, MATH, AMSGRAD, MAXIMIZE,
                              APPLY_DECAY, APPLY_L2)
    store_param(table_ptr, row, offs, p, mask, high_key, NCOLS, EXTRA, P, MODE, ALIGNED, FULL)
    store_rounded(m_ptr, offs, m, mask, FULL, S)
    store_rounded(v_ptr, offs, v, mask, FULL, S)
    if AMSGRAD:
        store_rounded(vmax_ptr, offs, vmax, mask, FULL, S)


@triton.jit
def adam_kernel(table_ptr, blocks_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64, beta1: tl.float64,
                beta2: tl.float64, one_minus_beta1: tl.float64, one_minus_beta2: tl.float64,
                eps: tl.float64, weight_decay: tl.float64, decay: tl.float64, NCOLS: tl.constexpr, MODE: tl.constexpr,
                EXTRA: tl.constexpr,
                P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, AMSGRAD: tl.constexpr,
                MAXIMIZE: tl.constexpr, APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr,
                HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr,
                BLOCK: tl.constexpr):
    """Table row: p, g, m, v, [vmax], [master/remainder or key: MODE, param_modes.py], step, numel."""
    row, start = block_coords(blocks_ptr, BLOCK)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    t = step_of(table_ptr, row, NCOLS - 2, NCOLS)
    # reference: adam_scalars, in fp64 from this tensor's own step, then rounded to MATH
    step_size = (lr / (1.0 - pow_int(beta1, t))).to(MATH)
    bc2_sqrt = tl.sqrt(1.0 - pow_int(beta2, t)).to(MATH)
    numel = active_numel(numel, found_inf_ptr, HAS_FOUND_INF)
    if MODE == 3:  # stochastic rounding's key of this block (param_modes.py)
        high_key = stochastic_high_key(table_ptr, row, start, t, EXTRA, NCOLS)
    else:
        high_key = tl.full((), 0, tl.uint32)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    if start + BLOCK <= numel:
        _adam_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, step_size, bc2_sqrt, beta2.to(MATH),
                    one_minus_beta1.to(MATH), one_minus_beta2.to(MATH), eps.to(MATH),
                    weight_decay.to(MATH), decay.to(MATH), NCOLS, MODE, EXTRA, P, S, MATH, AMSGRAD, MAXIMIZE,
                    APPLY_DECAY, APPLY_L2, HAS_GRAD_SCALE, ALIGNED, True)
    else:
        _adam_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, step_size, bc2_sqrt, beta2.to(MATH),
                    one_minus_beta1.to(MATH), one_minus_beta2.to(MATH), eps.to(MATH),
                    weight_decay.to(MATH), decay.to(MATH), NCOLS, MODE, EXTRA, P, S, MATH, AMSGRAD, MAXIMIZE,
                    APPLY_DECAY, APPLY_L2, HAS_GRAD_SCALE, ALIGNED, False)
