"""What the reference implementations share: the update on a math-dtype copy and its write-back
(the dtype policy itself is fused_optim.dtypes).
"""
import torch

from ..dtypes import LOW_PRECISION


def as_math(param: torch.Tensor) -> torch.Tensor:
    """The tensor to update: the tensor itself, or an fp32 copy of a bf16/fp16 param or state
    (written back, rounded once, by write_back)."""
    return param.float() if param.dtype in LOW_PRECISION else param


def write_back(param: torch.Tensor, work: torch.Tensor) -> None:
    """Store the updated values into the param (or state) if the math ran on a copy."""
    if work is not param:
        param.copy_(work)
