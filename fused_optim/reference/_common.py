"""What the reference implementations share: the register dtype of the math and write-back.

bf16/fp16 parameters are updated in fp32 (the native kernels do the same) and rounded back
once per step; fp32 and fp64 parameters are updated in place in their own dtype.
"""
import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in, and the default state dtype, for a param dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def as_math(param: torch.Tensor) -> torch.Tensor:
    """The tensor to update: the param itself, or an fp32 copy of a bf16/fp16 param."""
    return param.float() if param.dtype in LOW_PRECISION else param


def write_back(param: torch.Tensor, work: torch.Tensor) -> None:
    """Store the updated values into the param if the math ran on a copy."""
    if work is not param:
        param.copy_(work)
