"""fused_optim: fused multi-tensor optimizer steps for PyTorch.

    import fused_optim
    opt = fused_optim.Adai(model.parameters(), lr=0.5)            # backend="auto"
    opt = fused_optim.DualAdam(model.parameters(), backend="cpu")  # the native CPU kernels
"""
__version__ = "0.1.0"

import torch  # noqa: F401  (loads torch's OpenMP runtime before the native module)

from . import optimizers, reference
from .backends import BACKENDS, BackendUnavailable, availability
from .optimizers import *  # noqa: F401,F403  (the optimizer classes, optimizers.__all__)

__all__ = ["BACKENDS", "BackendUnavailable", "availability", "reference", *optimizers.__all__]
