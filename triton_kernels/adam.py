"""Adam / AdamW, one launch per tensor list. Mirrors fused_optim/reference/adam.py (adam_step)
and csrc/include/fused_optim/math/adam.h.

Bytes per element with fp32 params and states: reads p, g, m, v and writes p, m, v: 28 B
(+8 B with amsgrad: read and write vmax).
"""
import triton
import triton.language as tl

from .moment_walk import moment_walk
from .multi_tensor import as_stored, div, pow_int, sqrt


@triton.jit
def adam_scalars(lr, beta1, beta2, t):
    """Reference: adam_scalars, in fp64 from this tensor's own step: (step_size, sqrt(bc2))."""
    return lr / (1.0 - pow_int(beta1, t)), tl.sqrt(1.0 - pow_int(beta2, t))


@triton.jit
def adam_math(p, g, m, v, vmax, t, lr, beta1, beta2, eps, weight_decay, _h5, DECOUPLED: tl.constexpr,
              AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr):
    """Reference: adam_step, statement by statement, on registers of the math dtype. Each state
    is taken as stored (rounded to S) before later statements read it, as in the reference."""
    step_size, bc2_sqrt = adam_scalars(lr, beta1, beta2, t)
    if MAXIMIZE:
        g = -g
    if weight_decay != 0.0:
        if DECOUPLED:
            p = p * (1.0 - lr * weight_decay).to(MATH)  # AdamW: p *= 1 - lr wd
        else:
            g = g + weight_decay.to(MATH) * p  # Adam: g += wd p
    m = as_stored(m + (1.0 - beta1).to(MATH) * (g - m), S, MATH)  # m.lerp_(g, 1 - beta1)
    v = as_stored(v * beta2.to(MATH) + (1.0 - beta2).to(MATH) * g * g, S, MATH)
    second = v
    if AMSGRAD:
        vmax = tl.where(vmax > v, vmax, v)  # torch.maximum; exact, already in S
        second = vmax
    denom = div(sqrt(second, MATH), bc2_sqrt.to(MATH), MATH) + eps.to(MATH)
    p = p + div((-step_size.to(MATH)) * m, denom, MATH)  # addcdiv_: self + value * t1 / t2
    return p, m, v, vmax


@triton.jit
def adam_kernel(table_ptr, blocks_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64, beta1: tl.float64,
                beta2: tl.float64, eps: tl.float64, weight_decay: tl.float64, DECOUPLED: tl.constexpr,
                AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, STORAGE: tl.constexpr, EXTRA: tl.constexpr,
                P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                HAS_FOUND_INF: tl.constexpr, NCOLS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Table row: p, g, m, v, [vmax], [master/remainder or key], step, numel (moment_walk.py)."""
    moment_walk(table_ptr, blocks_ptr, table_ptr, grad_scale_ptr, found_inf_ptr, lr, beta1, beta2, eps, weight_decay,
                0.0, adam_math, DECOUPLED, AMSGRAD, MAXIMIZE, False, STORAGE, EXTRA, P, S, MATH, HAS_GRAD_SCALE,
                HAS_FOUND_INF, NCOLS, ALIGNED, BLOCK)
