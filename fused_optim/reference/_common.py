"""What the reference implementations share: the register dtype of the math and write-back.

bf16/fp16 parameters are updated in fp32 (the native kernels do the same) and rounded back
once per step; fp32 and fp64 parameters are updated in place in their own dtype.
"""
import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in, and the default state dtype, for a param dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


# State dtypes a user may choose instead of the default (the math dtype): bf16 halves the
# state memory of fp32/bf16/fp16 params; the math still runs in fp32.
STATE_DTYPES = (torch.bfloat16,)


def state_dtype_for(param_dtype: torch.dtype, state_dtype) -> torch.dtype:
    """The dtype of a param's states: the math dtype, or the chosen one (None = default)."""
    if state_dtype is None:
        return math_dtype(param_dtype)
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None or one of {[str(d) for d in STATE_DTYPES]}, got {state_dtype!r}")
    if param_dtype == torch.float64:
        raise ValueError(f"state_dtype={state_dtype} is for fp32/bf16/fp16 params; fp64 params keep fp64 states")
    return state_dtype


def as_math(param: torch.Tensor) -> torch.Tensor:
    """The tensor to update: the tensor itself, or an fp32 copy of a bf16/fp16 param or state
    (written back, rounded once, by write_back)."""
    return param.float() if param.dtype in LOW_PRECISION else param


def write_back(param: torch.Tensor, work: torch.Tensor) -> None:
    """Store the updated values into the param (or state) if the math ran on a copy."""
    if work is not param:
        param.copy_(work)
