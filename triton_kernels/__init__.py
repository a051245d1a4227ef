"""Triton kernels of fused_optim, installed as fused_optim.triton_kernels (the bare name
`triton_kernels` belongs to a package of the Triton project).

This version ships no Triton kernel yet: fused_optim.backends reports the "triton" backend
as unavailable and says why.
"""
