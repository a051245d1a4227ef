"""Triton kernels of fused_optim, installed as fused_optim.triton_kernels (the bare name
`triton_kernels` belongs to a package of the Triton project).

multi_tensor.py   the pointer table, block map, dtype-aware loads/stores, device scalars and
                  the one launch function every kernel launch goes through
param_storage.py  loads and stores of the params in each storage mode (masters, remainders,
                  stochastic rounding)
moment_walk.py    the block walk of the single-pass optimizers, and their kernel convention
adam.py, adamomentum.py, dualadam.py, lion.py
                  one optimizer's math (same stems as csrc/include/fused_optim/math/*.h) and
                  its kernel, a call of the walk
adai.py, adai_clip.py
                  Adai's two passes and its pass 1 with grad clipping

fused_optim/triton_backend.py launches them. Set TRITON_INTERPRET=1 before importing them to
run them on CPU tensors with the Triton interpreter.
"""
import re as _re

import triton as _triton

# The oldest triton these kernels are checked with (tools/torch_compat.py runs the triton tests,
# interpreter and tests/triton_device_compile.py, on torch 2.6's triton 3.2): triton 3.0's
# interpreter gives wrong results. 3.2 also sets what the kernels may use: no tuples passed
# between jit functions (moment_walk.py).
MIN_TRITON = (3, 2)


class TritonTooOld(ImportError):
    """The installed triton is older than MIN_TRITON (the triton backend is then unavailable)."""


if tuple(int(n) for n in _re.findall(r"\d+", _triton.__version__)[:2]) < MIN_TRITON:
    raise TritonTooOld(f"fused_optim's Triton kernels need triton >= {'.'.join(map(str, MIN_TRITON))}, "
                       f"this is triton {_triton.__version__}")
