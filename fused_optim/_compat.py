"""What differs between the torch releases fused_optim supports (any torch >= 2.4).

Checked with tools/torch_compat.py (the whole suite in a virtual environment per release):
- torch.compile of step(): from torch 2.6 the step traces into one graph. torch 2.4 cannot
  functionalize custom operators that mutate tensor lists (every backend call is one:
  operations.py), so there dynamo runs step() eagerly instead (a graph break; fullgraph=True
  raises), which gives the same result. torch 2.5 is not checked and is treated as 2.4.
- the triton backend needs triton >= 3.2 (triton_kernels/__init__.py), the one torch 2.6
  pins; torch 2.4 and 2.5 pin triton 3.0 and 3.1.
"""
import re
from typing import Callable, Tuple

import torch


def torch_version() -> Tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


# the first torch whose torch.compile traces a step (tests/test_compile.py)
COMPILED_STEP_SINCE = (2, 6)
STEP_COMPILES = torch_version() >= COMPILED_STEP_SINCE


def eager_under_compile_before_2_6(step: Callable) -> Callable:
    """step itself where torch.compile can trace it, else step run eagerly by dynamo."""
    return step if STEP_COMPILES else torch.compiler.disable(step)
