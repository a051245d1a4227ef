"""Triton kernels of fused_optim, installed as fused_optim.triton_kernels (the bare name
`triton_kernels` belongs to a package of the Triton project).

multi_tensor.py   the pointer table, block map, dtype-aware loads/stores and device scalars
adam.py, adamomentum.py, dualadam.py, adai.py
                  one @triton.jit math helper per optimizer (same stems as
                  csrc/include/fused_optim/math/*.h) and its kernel(s)

fused_optim/triton_backend.py launches them. Set TRITON_INTERPRET=1 before importing them to
run them on CPU tensors with the Triton interpreter.
"""
import re as _re

import triton as _triton

# The oldest triton these kernels are checked with: tools/torch_compat.py ran the triton tests
# (interpreter) and tests/triton_device_compile.py (every variant compiled for sm_90) on
# triton 3.2 (torch 2.6's); under triton 3.0 (torch 2.4's) the interpreter gave wrong results.
MIN_TRITON = (3, 2)


class TritonTooOld(ImportError):
    """The installed triton is older than MIN_TRITON (the triton backend is then unavailable)."""


if tuple(int(n) for n in _re.findall(r"\d+", _triton.__version__)[:2]) < MIN_TRITON:
    raise TritonTooOld(f"fused_optim's Triton kernels need triton >= {'.'.join(map(str, MIN_TRITON))}, "
                       f"this is triton {_triton.__version__}")
