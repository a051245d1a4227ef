"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023, Algorithm 2): the
sign of an interpolation of momentum and gradient is the update, and the momentum is updated
after it with its own rate. The native kernel mirroring this is
csrc/include/fused_optim/math/lion.h.
"""
from typing import List

import torch

from ._common import as_math, write_back


def lion_step(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    steps: List[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    """One Lion step. steps (already advanced) are not part of the rule; the contract passes
    them for the param storage that rounds stochastically by step.

    Each product is rounded on its own before the sum (no a*b+c contraction anywhere), so
    kernels that compute the same statements in the same dtype agree bit for bit. The sign is
    0 for an exact 0 (a tie, or a zero grad on a zero momentum: the param moves only by the
    decay) and NaN for NaN, as jnp.sign in the authors' code: torch.sign gives 0 for NaN, which
    would leave a param whose grad went NaN silently frozen instead of visibly NaN."""
    del steps
    for i, param in enumerate(params):
        p = as_math(param)
        g = grads[i].to(p.dtype)
        m = as_math(exp_avgs[i])
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        c = m * beta1 + g * (1 - beta1)
        update = torch.where(torch.isnan(c), c, c.sign())
        p.sub_(update * lr)  # update is -1, 0 or 1 (or NaN): lr * update is exact
        m.mul_(beta2).add_(g * (1 - beta2))
        write_back(param, p)
        write_back(exp_avgs[i], m)
