"""Adai (adaptive inertia) as the authors' code computes it, spec section "Adai", split at
the global reduction: pass 1 updates v and returns the group's sum of vhat; the caller sums
over ALL groups, divides by the element count, and pass 2 applies the inertia update.
Native mirror: csrc/include/fused_optim/math/adai.h.
"""
import math
from typing import List

import torch

from ._common import as_math, write_back


def adai_bias_correction2(beta2: float, step: float) -> float:
    return 1 - beta2**step


def adai_second_moment(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    steps: List[float],
    *,
    beta2: float,
    weight_decay: float,
    decoupled: bool,
) -> torch.Tensor:
    """Pass 1: v = beta2 v + (1 - beta2) g_eff^2. Returns sum(vhat) as a 0-dim fp64 tensor on
    the params' device (no host sync). p.grad is never modified (OURS)."""
    total = torch.zeros((), dtype=torch.float64, device=params[0].device if params else "cpu")
    for i, param in enumerate(params):
        v = as_math(exp_avg_sqs[i])
        g = grads[i].to(v.dtype)
        if weight_decay != 0 and not decoupled:
            g = g.add(as_math(param), alpha=weight_decay)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        total += (v / adai_bias_correction2(beta2, steps[i])).sum(dtype=torch.float64)
        write_back(exp_avg_sqs[i], v)
    return total


def adai_clip_sums(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    steps: List[float],
    *,
    beta2: float,
    weight_decay: float,
    decoupled: bool,
    norm_type: float,
) -> torch.Tensor:
    """What a clipped Adai step needs before its update, from one read of g and v (and p with
    L2), when the clip coefficient c is not known yet (it needs the norm of ALL grads):
    [norm part, c0, c1, c2] as a float64 tensor on the params' device, where

    - norm part = sum of |g|^norm_type (max |g| for inf, min |g| for -inf) over the group,
      so the total norm is the norm_type-th root of the sum over all groups;
    - c0 + c1 c + c2 c^2 = the group's sum of vhat = v_new / bc2 when every grad is
      multiplied by c: v_new = beta2 v + (1 - beta2) (c g + wd p)^2 is quadratic in c, so
      c0 = sum (beta2 v + (1 - beta2) wd^2 p^2) / bc2, c1 = sum 2 (1 - beta2) wd g p / bc2,
      c2 = sum (1 - beta2) g^2 / bc2 (wd only for coupled L2).

    Sums in fp64 over the elements' exact fp64 values; writes nothing (OURS: the reference
    step runs clip_grad_norm_'s rescale and then adai_second_moment; this is the oracle of
    the backends' one-pass version)."""
    device = params[0].device if params else "cpu"
    out = torch.zeros(4, dtype=torch.float64, device=device)
    if math.isinf(norm_type) and params:
        out[0] = math.inf if norm_type < 0 else 0.0
    l2 = weight_decay != 0 and not decoupled
    for i, param in enumerate(params):
        g = grads[i].double()
        v = exp_avg_sqs[i].double()
        a = g.abs()
        if norm_type == math.inf:
            out[0] = torch.maximum(out[0], a.max()) if a.numel() else out[0]
        elif norm_type == -math.inf:
            out[0] = torch.minimum(out[0], a.min()) if a.numel() else out[0]
        else:
            out[0] += a.pow(norm_type).sum()
        w = 1.0 / adai_bias_correction2(beta2, steps[i])
        c0 = beta2 * v.sum()
        if l2:
            p = param.double()
            c0 = c0 + (1 - beta2) * weight_decay**2 * (p * p).sum()
            out[2] += w * 2 * (1 - beta2) * weight_decay * (g * p).sum()
        out[1] += w * c0
        out[3] += w * (1 - beta2) * (g * g).sum()
    return out


def adai_inertia_ratio(vhat: torch.Tensor, vbar: torch.Tensor) -> torch.Tensor:
    """vhat / vbar; when vbar == 0 every counted vhat is 0 and the ratio is taken as 1 (OURS:
    the authors' code gives NaN; 1 is the limit of uniformly vanishing moments)."""
    vbar = vbar.to(vhat.dtype)
    return torch.where(vbar == 0, torch.ones_like(vhat), vhat / vbar)


def adai_update(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    beta1_prods: List[torch.Tensor],
    steps: List[float],
    *,
    lr: float,
    beta0: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    vbar: torch.Tensor,
) -> None:
    """Pass 2, given vbar = (sum of vhat over every param with a grad) / (their element count)."""
    for i, param in enumerate(params):
        p = as_math(param)
        g = grads[i].to(p.dtype)
        m, v, beta1_prod = as_math(exp_avgs[i]), as_math(exp_avg_sqs[i]), as_math(beta1_prods[i])
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                # g_eff uses p from before this step's decay; p itself is not decayed (L2)
                g = g.add(p, alpha=weight_decay)
        vhat = v / adai_bias_correction2(beta2, steps[i])
        beta1 = (1.0 - adai_inertia_ratio(vhat, vbar).mul_(beta0)).clamp_(0.0, 1 - eps)
        beta1_prod.mul_(beta1)
        m.mul_(beta1).addcmul_(1 - beta1, g)
        p.sub_(m / (1 - beta1_prod), alpha=lr)
        write_back(param, p)
        write_back(exp_avgs[i], m)
        write_back(beta1_prods[i], beta1_prod)
