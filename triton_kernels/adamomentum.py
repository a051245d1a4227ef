"""AdaMomentum (AdaM3), one launch per tensor list. Mirrors fused_optim/reference/adamomentum.py
(adamomentum_step, adamomentum_scalars) and csrc/include/fused_optim/math/adamomentum.h.

Bytes per element with fp32 params and states: reads p, g, m, v and writes p, m, v: 28 B
(+8 B with amsgrad: read and write vmax).
"""
import triton
import triton.language as tl

from .param_modes import load_param, stochastic_high_key, store_param
from .multi_tensor import (as_stored, block_coords, column_ptr, div, active_numel, load_math, pow_int,
                           sqrt, step_of, store_rounded, unscaled)

# The denominator of a tensor's step (adamomentum.h: AdaMomentumDenominator)
BIAS_CORRECTED = 0  # sqrt(v) / sqrt(bc2)
RECTIFIED = 1  # rectify, rho_t >= 5: sqrt(v) + eps
MOMENTUM_ONLY = 2  # rectify, rho_t < 5: none, the step is SGD with momentum


@triton.jit
def adamomentum_scalars(lr, beta1, beta2, t, RECTIFY: tl.constexpr):
    """Reference: adamomentum_scalars, in fp64 from this tensor's own step t:
    (step_size, sqrt(bc2), denominator kind), with python's evaluation order."""
    bias_correction1 = 1.0 - pow_int(beta1, t)
    beta2_t = pow_int(beta2, t)
    bias_correction2 = 1.0 - beta2_t
    bc2_sqrt = tl.sqrt(bias_correction2)
    if RECTIFY:
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2_t / bias_correction2
        # the select below drops r_t while rho_t < 5, as the reference never forms it then;
        # the clamp at 0 only keeps it from being a NaN (the radicand is > 0 for rho_t >= 5)
        r_t = tl.sqrt(tl.maximum(bias_correction2 * (rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                 / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.0))
        adaptive = rho_t >= 5.0
        step_size = tl.where(adaptive, lr * r_t / bias_correction1, lr / bias_correction1)
        kind = tl.where(adaptive, 1, 2)
    else:
        step_size = lr / bias_correction1
        kind = tl.full((), 0, tl.int32)
    return step_size, bc2_sqrt, kind


@triton.jit
def adamomentum_math(p, g, m, v, vmax, step_size, bc2_sqrt, kind, beta1, beta2, one_minus_beta1,
                     one_minus_beta2, eps, weight_decay, decay, S: tl.constexpr, MATH: tl.constexpr,
                     AMSGRAD: tl.constexpr, APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr):
    """Reference: adamomentum_step, statement by statement, on registers of the math dtype;
    states are taken as stored (rounded to S) before later statements read them."""
    if APPLY_DECAY:
        p = p * decay  # decoupled (the authors' default): p *= 1 - lr wd
    if APPLY_L2:
        g = g + weight_decay * p
    m = as_stored(m * beta1 + one_minus_beta1 * g, S, MATH)
    # the NEW m is squared, and eps accumulates inside the state (authors' code)
    v = as_stored(v * beta2 + one_minus_beta2 * m * m + eps, S, MATH)
    second = v
    if AMSGRAD:
        vmax = tl.where(vmax > v, vmax, v)
        second = vmax
    root = sqrt(second, MATH)
    # addcdiv_(m, sqrt(v) / sqrt(bc2)), addcdiv_(m, sqrt(v) + eps), or add_(m): m / 1 == m exactly
    denom = tl.where(kind == 0, div(root, bc2_sqrt, MATH), tl.where(kind == 1, root + eps, 1.0))
    p = p + div((-step_size) * m, denom, MATH)
    return p, m, v, vmax


@triton.jit
def _adamomentum_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, step_size, bc2_sqrt, kind, beta1, beta2,
                       one_minus_beta1, one_minus_beta2, eps, weight_decay, decay, NCOLS: tl.constexpr,
                       MODE: tl.constexpr, EXTRA: tl.constexpr,
                       P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, AMSGRAD: tl.constexpr,
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
    p, m, v, vmax = adamomentum_math(p, g, m, v, vmax, step_size, bc2_sqrt, kind, beta1, beta2,
                                     one_minus_beta1, one_minus_beta2, eps, weight_decay, decay, S, MATH,
                                     AMSGRAD, APPLY_DECAY, APPLY_L2)
    store_param(table_ptr, row, offs, p, mask, high_key, NCOLS, EXTRA, P, MODE, ALIGNED, FULL)
    store_rounded(m_ptr, offs, m, mask, FULL, S)
    store_rounded(v_ptr, offs, v, mask, FULL, S)
    if AMSGRAD:
        store_rounded(vmax_ptr, offs, vmax, mask, FULL, S)


@triton.jit
def adamomentum_kernel(table_ptr, blocks_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64,
                       beta1: tl.float64, beta2: tl.float64, one_minus_beta1: tl.float64,
                       one_minus_beta2: tl.float64, eps: tl.float64, weight_decay: tl.float64,
                       decay: tl.float64, NCOLS: tl.constexpr, MODE: tl.constexpr, EXTRA: tl.constexpr,
                       P: tl.constexpr, S: tl.constexpr,
                       MATH: tl.constexpr, AMSGRAD: tl.constexpr, RECTIFY: tl.constexpr,
                       APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                       HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Table row: p, g, m, v, [vmax], [master/remainder or key: MODE, param_modes.py], step, numel."""
    row, start = block_coords(blocks_ptr, BLOCK)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    t = step_of(table_ptr, row, NCOLS - 2, NCOLS)
    step_size, bc2_sqrt, kind = adamomentum_scalars(lr, beta1, beta2, t, RECTIFY)
    step_size = step_size.to(MATH)
    bc2_sqrt = bc2_sqrt.to(MATH)
    numel = active_numel(numel, found_inf_ptr, HAS_FOUND_INF)
    if MODE == 3:  # stochastic rounding's key of this block (param_modes.py)
        high_key = stochastic_high_key(table_ptr, row, start, t, EXTRA, NCOLS)
    else:
        high_key = tl.full((), 0, tl.uint32)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    if start + BLOCK <= numel:
        _adamomentum_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, step_size, bc2_sqrt, kind,
                           beta1.to(MATH),
                           beta2.to(MATH), one_minus_beta1.to(MATH), one_minus_beta2.to(MATH), eps.to(MATH),
                           weight_decay.to(MATH), decay.to(MATH), NCOLS, MODE, EXTRA, P, S, MATH, AMSGRAD, APPLY_DECAY,
                           APPLY_L2, HAS_GRAD_SCALE, ALIGNED, True)
    else:
        _adamomentum_block(table_ptr, row, offs, mask, grad_scale_ptr, high_key, step_size, bc2_sqrt, kind,
                           beta1.to(MATH),
                           beta2.to(MATH), one_minus_beta1.to(MATH), one_minus_beta2.to(MATH), eps.to(MATH),
                           weight_decay.to(MATH), decay.to(MATH), NCOLS, MODE, EXTRA, P, S, MATH, AMSGRAD, APPLY_DECAY,
                           APPLY_L2, HAS_GRAD_SCALE, ALIGNED, False)
