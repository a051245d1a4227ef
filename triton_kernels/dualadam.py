"""InvAdam / DualAdam, one launch per tensor list. Mirrors fused_optim/reference/dualadam.py
(dualadam_step, dualadam_blend_weight) and csrc/include/fused_optim/math/dualadam.h.

Bytes per element with fp32 params and states: reads p, g, m, v and writes p, m, v: 28 B.
"""
import triton
import triton.language as tl

from .moment_walk import moment_walk
from .multi_tensor import as_stored, div, pow_int, sqrt


@triton.jit
def dualadam_blend_weight(t, switch_rate):
    """Reference: dualadam_blend_weight, in fp64 on the device: alpha = max(0, 1 - t xi) and
    blend = alpha >= xi. The launch disables fp contraction, so 1 - t*xi rounds twice as in
    python (a fused multiply-add would flip e.g. xi = 0.05, t = 19)."""
    alpha = tl.maximum(1.0 - t * switch_rate, 0.0)
    return alpha, alpha >= switch_rate


@triton.jit
def dualadam_math(p, g, m, v, _s2, t, lr, beta1, beta2, eps, weight_decay, switch_rate, _f0, _f1, _f2,
                  S: tl.constexpr, MATH: tl.constexpr):
    """Reference: dualadam_step's per-tensor body, statement by statement, on registers of the
    math dtype; states are taken as stored (rounded to S) before later statements read them.
    t is the optimizer's global step, so the scalars are the same for every tensor."""
    alpha, blend = dualadam_blend_weight(t, switch_rate)
    # bias corrections with the GLOBAL step, fp64 then rounded (dualadam.h: dualadam_hyper)
    bc1 = (1.0 - pow_int(beta1, t)).to(MATH)
    bc2 = (1.0 - pow_int(beta2, t)).to(MATH)
    if weight_decay != 0.0:
        p = p * (1.0 - lr * weight_decay).to(MATH)  # decoupled (authors' code)
    m = as_stored(m * beta1.to(MATH) + (1.0 - beta1).to(MATH) * g, S, MATH)
    v = as_stored(v * beta2.to(MATH) + (1.0 - beta2).to(MATH) * g * g, S, MATH)
    mhat = div(m, bc1, MATH)
    d = sqrt(div(v, bc2, MATH), MATH) + eps.to(MATH)
    adam = div(mhat, d, MATH)
    # eps sits in the inverse term too (authors' code; the paper writes mhat sqrt(vhat))
    update = tl.where(blend, (mhat * d) * alpha.to(MATH) + (1.0 - alpha).to(MATH) * adam, adam)
    p = p + (-lr.to(MATH)) * update
    return p, m, v, _s2


@triton.jit
def dualadam_kernel(table_ptr, blocks_ptr, global_step_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64,
                    beta1: tl.float64, beta2: tl.float64, eps: tl.float64, weight_decay: tl.float64,
                    switch_rate: tl.float64, STORAGE: tl.constexpr, EXTRA: tl.constexpr, P: tl.constexpr,
                    S: tl.constexpr, MATH: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                    NCOLS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Table row: p, g, m, v, [master/remainder or key], numel (moment_walk.py). The step is the
    optimizer's global one (a device scalar)."""
    moment_walk(table_ptr, blocks_ptr, global_step_ptr, grad_scale_ptr, found_inf_ptr, lr, beta1, beta2, eps,
                weight_decay, switch_rate, dualadam_math, False, False, False, True, STORAGE, EXTRA, P, S, MATH,
                HAS_GRAD_SCALE, HAS_FOUND_INF, NCOLS, ALIGNED, BLOCK)
