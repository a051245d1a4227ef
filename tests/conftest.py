"""Session-wide test setup.

Without a CUDA device the triton backend runs its kernels under the Triton interpreter on
CPU tensors, which is how CI covers it. Triton reads TRITON_INTERPRET when a kernel is
defined, so it is set here, before any test imports fused_optim's kernels; a GPU machine
runs them compiled on CUDA tensors instead. An explicit setting in the environment wins.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
