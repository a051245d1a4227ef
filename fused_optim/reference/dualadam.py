"""InvAdam / DualAdam as the authors' code computes them, spec section "InvAdam and DualAdam".
Native mirror: csrc/include/fused_optim/math/dualadam.h.
"""
from typing import List

import torch

from ._common import as_math, write_back


def dualadam_blend_weight(global_step: int, switch_rate: float):
    """(alpha, blend): alpha = max(0, 1 - t xi) in fp64; blend while alpha >= xi.

    The predicate must be evaluated in fp64 exactly like this: with xi = 0.05, step 19 gives
    1 - 19 * 0.05 = 0.04999999999999993 < 0.05, so the update is pure Adam from step 19 on.
    InvAdam is switch_rate 0: alpha == 1 >= 0 forever.
    """
    alpha = max(0.0, 1.0 - global_step * switch_rate)
    return alpha, alpha >= switch_rate


def dualadam_step(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    *,
    global_step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    switch_rate: float,
) -> None:
    """One DualAdam step for a group; global_step is the optimizer's, already advanced."""
    alpha, blend = dualadam_blend_weight(global_step, switch_rate)
    bias_correction1 = 1 - beta1**global_step
    bias_correction2 = 1 - beta2**global_step
    for i, param in enumerate(params):
        p = as_math(param)
        g = grads[i].to(p.dtype)
        m, v = as_math(exp_avgs[i]), as_math(exp_avg_sqs[i])
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        mhat = m / bias_correction1
        d = (v / bias_correction2).sqrt_().add_(eps)
        adam = mhat / d
        # eps sits in the inverse term too (authors' code; the paper writes mhat sqrt(vhat))
        update = (mhat * d).mul_(alpha).add_(adam, alpha=1 - alpha) if blend else adam
        p.add_(update, alpha=-lr)
        write_back(param, p)
        write_back(exp_avgs[i], m)
        write_back(exp_avg_sqs[i], v)
