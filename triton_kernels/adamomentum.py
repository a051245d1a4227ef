"""AdaMomentum (AdaM3), one launch per tensor list. Mirrors fused_optim/reference/adamomentum.py
(adamomentum_step, adamomentum_scalars) and csrc/include/fused_optim/math/adamomentum.h.

Bytes per element with fp32 params and states: reads p, g, m, v and writes p, m, v: 28 B
(+8 B with amsgrad: read and write vmax).
"""
import triton
import triton.language as tl

from .moment_walk import moment_walk
from .multi_tensor import as_stored, div, pow_int, sqrt

# The denominator of a tensor's step (adamomentum.h: AdaMomentumDenominator)
BIAS_CORRECTED = tl.constexpr(0)  # sqrt(v) / sqrt(bc2)
RECTIFIED = tl.constexpr(1)  # rectify, rho_t >= 5: sqrt(v) + eps
MOMENTUM_ONLY = tl.constexpr(2)  # rectify, rho_t < 5: none, the step is SGD with momentum


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
        kind = tl.where(adaptive, RECTIFIED, MOMENTUM_ONLY)
    else:
        step_size = lr / bias_correction1
        kind = tl.full((), BIAS_CORRECTED, tl.int32)
    return step_size, bc2_sqrt, kind


@triton.jit
def adamomentum_math(p, g, m, v, vmax, t, lr, beta1, beta2, eps, weight_decay, _h5, DECOUPLED: tl.constexpr,
                     AMSGRAD: tl.constexpr, RECTIFY: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr):
    """Reference: adamomentum_step, statement by statement, on registers of the math dtype;
    states are taken as stored (rounded to S) before later statements read them."""
    step_size, bc2_sqrt, kind = adamomentum_scalars(lr, beta1, beta2, t, RECTIFY)
    if DECOUPLED:
        p = p * (1.0 - lr * weight_decay).to(MATH)  # the authors' default: p *= 1 - lr wd, even for wd 0
    elif weight_decay != 0.0:
        g = g + weight_decay.to(MATH) * p
    m = as_stored(m * beta1.to(MATH) + (1.0 - beta1).to(MATH) * g, S, MATH)
    # the NEW m is squared, and eps accumulates inside the state (authors' code)
    v = as_stored(v * beta2.to(MATH) + (1.0 - beta2).to(MATH) * m * m + eps.to(MATH), S, MATH)
    second = v
    if AMSGRAD:
        vmax = tl.where(vmax > v, vmax, v)
        second = vmax
    root = sqrt(second, MATH)
    # addcdiv_(m, sqrt(v) / sqrt(bc2)), addcdiv_(m, sqrt(v) + eps), or add_(m): m / 1 == m exactly
    denom = tl.where(kind == BIAS_CORRECTED, div(root, bc2_sqrt.to(MATH), MATH),
                     tl.where(kind == RECTIFIED, root + eps.to(MATH), 1.0))
    p = p + div((-step_size.to(MATH)) * m, denom, MATH)
    return p, m, v, vmax


@triton.jit
def adamomentum_kernel(table_ptr, blocks_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64, beta1: tl.float64,
                       beta2: tl.float64, eps: tl.float64, weight_decay: tl.float64, DECOUPLED: tl.constexpr,
                       AMSGRAD: tl.constexpr, RECTIFY: tl.constexpr, STORAGE: tl.constexpr, EXTRA: tl.constexpr,
                       P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                       HAS_FOUND_INF: tl.constexpr, NCOLS: tl.constexpr, ALIGNED: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Table row: p, g, m, v, [vmax], [master/remainder or key], step, numel (moment_walk.py)."""
    moment_walk(table_ptr, blocks_ptr, table_ptr, grad_scale_ptr, found_inf_ptr, lr, beta1, beta2, eps, weight_decay,
                0.0, adamomentum_math, DECOUPLED, AMSGRAD, RECTIFY, False, STORAGE, EXTRA, P, S, MATH,
                HAS_GRAD_SCALE, HAS_FOUND_INF, NCOLS, ALIGNED, BLOCK)
