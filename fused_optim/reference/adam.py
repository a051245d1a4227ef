"""Adam / AdamW exactly as torch.optim.Adam/AdamW's single-tensor path (non-capturable),
operation by operation. The native kernel mirroring this is csrc/include/fused_optim/math/adam.h.
"""
import math
from typing import List, Optional

import torch

from ._common import as_math, write_back


def adam_scalars(lr: float, beta1: float, beta2: float, step: float):
    """(step_size, sqrt(bias_correction2)) in fp64, as torch.optim.Adam computes them."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    return lr / bias_correction1, math.sqrt(bias_correction2)


def adam_step(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    max_exp_avg_sqs: Optional[List[torch.Tensor]],
    steps: List[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """One Adam (decoupled=False) or AdamW (decoupled=True) step; steps are already advanced."""
    for i, param in enumerate(params):
        p = as_math(param)
        g = grads[i].to(p.dtype)
        m, v = as_math(exp_avgs[i]), as_math(exp_avg_sqs[i])
        if maximize:
            g = -g
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        second = v
        if amsgrad:
            second = as_math(max_exp_avg_sqs[i])
            torch.maximum(second, v, out=second)
            write_back(max_exp_avg_sqs[i], second)
        step_size, bc2_sqrt = adam_scalars(lr, beta1, beta2, steps[i])
        denom = (second.sqrt() / bc2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)
        write_back(param, p)
        write_back(exp_avgs[i], m)
        write_back(exp_avg_sqs[i], v)
