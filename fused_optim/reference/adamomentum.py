"""AdaMomentum (AdaM3) as the authors' code computes it, spec section "AdaMomentum".
Native mirror: csrc/include/fused_optim/math/adamomentum.h.
"""
import math
from typing import List, Optional

import torch

from ._common import as_math, write_back


def adamomentum_scalars(lr: float, beta1: float, beta2: float, step: float, rectify: bool):
    """(step_size, sqrt(bias_correction2), adaptive) in fp64 for one tensor's step.

    Without rectify: step_size = lr / bc1. With rectify (RAdam-style): while rho_t < 5 the
    step degenerates to SGD with momentum (adaptive=False, step_size = lr / bc1); after that
    step_size = lr r_t / bc1 and the denominator is sqrt(v) + eps.
    """
    bias_correction1 = 1 - beta1**step
    beta2_t = beta2**step
    bias_correction2 = 1 - beta2_t
    if not rectify:
        return lr / bias_correction1, math.sqrt(bias_correction2), True
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2_t / bias_correction2
    if rho_t < 5:
        return lr / bias_correction1, math.sqrt(bias_correction2), False
    r_t = math.sqrt(
        bias_correction2 * (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    )
    return lr * r_t / bias_correction1, math.sqrt(bias_correction2), True


def adamomentum_step(
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
    rectify: bool,
) -> None:
    """One AdaMomentum step; steps are already advanced."""
    for i, param in enumerate(params):
        p = as_math(param)
        g = grads[i].to(p.dtype)
        m, v = as_math(exp_avgs[i]), as_math(exp_avg_sqs[i])
        if decoupled:
            p.mul_(1 - lr * weight_decay)
        elif weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        # the NEW m is squared, and eps accumulates inside the state (authors' code)
        v.mul_(beta2).addcmul_(m, m, value=1 - beta2).add_(eps)
        second = v
        if amsgrad:
            second = as_math(max_exp_avg_sqs[i])
            torch.maximum(second, v, out=second)
            write_back(max_exp_avg_sqs[i], second)
        step_size, bc2_sqrt, adaptive = adamomentum_scalars(lr, beta1, beta2, steps[i], rectify)
        if not rectify:
            p.addcdiv_(m, second.sqrt() / bc2_sqrt, value=-step_size)
        elif adaptive:
            p.addcdiv_(m, second.sqrt().add_(eps), value=-step_size)
        else:
            p.add_(m, alpha=-step_size)
        write_back(param, p)
        write_back(exp_avgs[i], m)
        write_back(exp_avg_sqs[i], v)
