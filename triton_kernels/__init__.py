"""Triton kernels of fused_optim, installed as fused_optim.triton_kernels (the bare name
`triton_kernels` belongs to a package of the Triton project).

multi_tensor.py   the pointer table, block map, dtype-aware loads/stores and device scalars
adam.py, adamomentum.py, dualadam.py, adai.py
                  one @triton.jit math helper per optimizer (same stems as
                  csrc/include/fused_optim/math/*.h) and its kernel(s)

fused_optim/triton_backend.py launches them. Set TRITON_INTERPRET=1 before importing them to
run them on CPU tensors with the Triton interpreter.
"""
