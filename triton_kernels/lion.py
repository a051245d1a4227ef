"""Lion, one launch per tensor list. Mirrors fused_optim/reference/lion.py (lion_step) and
csrc/include/fused_optim/math/lion.h.

Bytes per element with fp32 params and states: reads p, g, m and writes p, m: 20 B.
"""
import triton
import triton.language as tl

from .moment_walk import moment_walk


@triton.jit
def sign(x, MATH: tl.constexpr):
    """The reference's sign: -1, +0 or 1 as torch.sign ((0 < x) - (x < 0): +0 for -0), and NaN
    for NaN (torch.sign gives 0; the reference keeps the NaN, as jnp.sign in the authors'
    code)."""
    return tl.where(x != x, x, (x > 0.0).to(MATH) - (x < 0.0).to(MATH))


@triton.jit
def lion_math(p, g, m, _s1, _s2, t, lr, beta1, beta2, weight_decay, _h4, _h5, _f0, _f1, _f2, S: tl.constexpr,
              MATH: tl.constexpr):
    """Reference: lion_step, statement by statement, on registers of the math dtype (t, the
    step, only keys STOCHASTIC storage's rounding, in the walk)."""
    if weight_decay != 0.0:
        p = p * (1.0 - lr * weight_decay).to(MATH)
    update = sign(m * beta1.to(MATH) + g * (1.0 - beta1).to(MATH), MATH)
    p = p - update * lr.to(MATH)  # update is -1, 0 or 1 (or NaN): lr * update is exact
    # no statement reads the new m: the store rounds it to S
    m = m * beta2.to(MATH) + g * (1.0 - beta2).to(MATH)
    return p, m, _s1, _s2


@triton.jit
def lion_kernel(table_ptr, blocks_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64, beta1: tl.float64,
                beta2: tl.float64, weight_decay: tl.float64, STORAGE: tl.constexpr, EXTRA: tl.constexpr,
                P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                HAS_FOUND_INF: tl.constexpr, NCOLS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Table row: p, g, m, [master/remainder or key], step, numel (moment_walk.py)."""
    moment_walk(table_ptr, blocks_ptr, table_ptr, grad_scale_ptr, found_inf_ptr, lr, beta1, beta2, weight_decay, 0.0,
                0.0, lion_math, False, False, False, False, STORAGE, EXTRA, P, S, MATH, HAS_GRAD_SCALE,
                HAS_FOUND_INF, NCOLS, ALIGNED, BLOCK)
