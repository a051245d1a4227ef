"""The dtype policy every layer follows: which param dtypes are served, the dtype the update
math runs in, the dtype of the states, and the dtype codes of the native modules
(csrc/include/fused_optim/dtypes.h).

bf16/fp16 parameters are updated in fp32 registers and rounded back once per step; fp32 and
fp64 parameters are updated in their own dtype. States default to the math dtype.
"""
import torch

# Parameter dtypes every backend serves: fp32/fp64 natively, bf16/fp16 with fp32 math.
SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
LOW_PRECISION = (torch.bfloat16, torch.float16)
# State dtypes a user may choose instead of the default (the math dtype): bf16 halves the
# state memory of fp32/bf16/fp16 params; the math still runs in fp32.
STATE_DTYPES = (torch.bfloat16,)
# The codes of csrc/include/fused_optim/dtypes.h, as the native modules take them.
NATIVE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in, and the default state dtype, for a param dtype."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def state_dtype_for(param_dtype: torch.dtype, state_dtype) -> torch.dtype:
    """The dtype of a param's states: the math dtype, or the chosen one (None = default)."""
    if state_dtype is None:
        return math_dtype(param_dtype)
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None or one of {[str(d) for d in STATE_DTYPES]}, got {state_dtype!r}")
    if param_dtype == torch.float64:
        raise ValueError(f"state_dtype={state_dtype} is for fp32/bf16/fp16 params; fp64 params keep fp64 states")
    return state_dtype
