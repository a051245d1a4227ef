"""GradScaler support for the backends that handle it on the host (torch, cpu).

GradScaler hands optimizers that set `_step_supports_amp_scaling` two 0-dim tensors as
attributes: `grad_scale` (the grads are still multiplied by it) and `found_inf` (nonzero when
some grad is inf/NaN: the step must change nothing). The GPU backends read both inside their
kernels; these host versions serve CPU tensors, where reading a scalar costs no sync.
"""
from typing import List, Optional

import torch

from .dtypes import math_dtype


def skipped(found_inf: Optional[torch.Tensor]) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


def unscaled(grads: List[torch.Tensor], grad_scale: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """The grads divided by the scale in the math dtype (fp32 for bf16/fp16 grads, as torch's
    fused Adam does; fp64 for fp64), stored back in the grad dtype (new tensors: p.grad stays
    as it is). GradScaler's scales are powers of two,
    so the division is exact and this equals unscale_() followed by an unscaled step."""
    if grad_scale is None:
        return grads
    return [(g.to(math_dtype(g.dtype)) / grad_scale).to(g.dtype) for g in grads]
