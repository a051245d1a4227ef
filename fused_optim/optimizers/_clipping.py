"""Gradient clipping inside the step (max_grad_norm): torch.nn.utils.clip_grad_norm_'s rule
without its rescale pass over the grads.

The total norm is taken the way clip_grad_norm_ takes it (torch._foreach_norm per tensor, then
the norm of those norms), on the device, with no host sync. The clip coefficient
min(1, max_norm / (norm + 1e-6)) then joins the GradScaler scale the backends already divide
every grad by inside their update: grad_scale' = grad_scale / coefficient. The cpu, cuda and
triton kernels divide each grad by it in their loop (the cpu backend gets it as a host number,
the GPU kernels read it on the device), so clipping costs them the norm's read of the grads
(4 B/element for fp32) instead of clip_grad_norm_'s read + rescale (12 B/element); the torch
backend divides a copy of the grads (as it does for a GradScaler).
"""
import math
from typing import List, Optional, Tuple

import torch

from . import _validation as check
from ._sharding import global_norm

# torch.nn.utils.clip_grad_norm_'s guard against a zero norm
NORM_EPS = 1e-6


def clip_settings(groups, name: str) -> Tuple[Optional[float], float, bool]:
    """(max_grad_norm, norm_type, error_if_nonfinite), which must agree across param groups:
    the norm covers every param of every group, so one bound applies to all of them."""
    seen = {(g.get("max_grad_norm"), g.get("norm_type", 2.0), g.get("error_if_nonfinite", False)) for g in groups}
    if len(seen) > 1:
        raise ValueError(f"{name}: max_grad_norm, norm_type and error_if_nonfinite must be the same in every param "
                         f"group (the norm covers all of them), got {sorted(seen, key=str)}")
    max_norm, norm_type, error_if_nonfinite = seen.pop() if seen else (None, 2.0, False)
    if max_norm is not None:
        max_norm = check.non_negative("max_grad_norm", max_norm)
    norm_type = float(norm_type)
    if not (norm_type > 0 or norm_type == -math.inf):  # NaN fails too
        raise ValueError(f"{name}: norm_type must be > 0 or inf, got {norm_type}")
    return max_norm, norm_type, check.flag("error_if_nonfinite", error_if_nonfinite)


def total_norm(batches: List[Tuple[object, List[torch.Tensor]]], norm_type: float,
               device: torch.device) -> torch.Tensor:
    """The norm of all grads together, as clip_grad_norm_ computes it (fp32 for fp32/bf16/fp16
    grads: torch._foreach_norm's result dtype), from (shard group, local grads) batches: the
    grads of sharded (FSDP2) params are this rank's shards, whose part is all-reduced over
    their group (_sharding.global_norm)."""
    parts = []
    for group, grads in batches:
        if grads:
            norms = torch._foreach_norm(grads, norm_type)
            parts.append((group, torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), norm_type)))
    if not parts:
        return torch.zeros((), device=device)
    if len(parts) == 1 and parts[0][0] is None:
        return parts[0][1]
    return global_norm(parts, norm_type)


def clipped_scale(norm: torch.Tensor, max_norm: float, grad_scale: Optional[torch.Tensor],
                  dtype: torch.dtype) -> torch.Tensor:
    """The divisor for the grads: the GradScaler scale (1 without one) over the clip
    coefficient, in `dtype`. `norm` is the norm of the unscaled grads (fp64 for fp64 grads,
    whose divisor then stays fp64 on the torch and cpu backends; the GPU kernels read an fp32
    scale, as torch's fused optimizers do)."""
    coefficient = torch.clamp(max_norm / (norm + NORM_EPS), max=1.0).to(dtype)
    if grad_scale is None:
        return torch.ones((), dtype=dtype, device=norm.device) / coefficient
    return grad_scale.to(dtype) / coefficient
