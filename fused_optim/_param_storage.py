"""Param storage: how a fusing backend keeps a call's bf16/fp16 params, as
optimizers/_mixed_precision.py (the option a param group chose) hands it to the backends.

Modes (the codes of csrc/include/fused_optim/math/rounding.h and of the Triton kernels'
STORAGE constexpr): PLAIN, the param itself; MASTER, an fp32 master per param (the param
receives the master rounded to nearest); REMAINDER, an int16 remainder per bf16 param (param
and remainder join into the fp32 value); STOCHASTIC, the bf16 param rounded stochastically by a
hash of the seed, each param's index among all the optimizer's params (tensor_indices), its
step and the element. Backends get a ParamStorage for the modes other than PLAIN (None for
plain params), in eager steps only (the operators' schemas carry none: under torch.compile the
optimizer takes the unfused path).
"""
from typing import List, NamedTuple, Optional

import torch

PLAIN, MASTER, REMAINDER, STOCHASTIC = 0, 1, 2, 3
# the group option (optimizers/_mixed_precision.py) -> its mode
OPTION_MODES = {"master_weights": MASTER, "param_remainders": REMAINDER, "stochastic_rounding": STOCHASTIC}
# the dtype of the per-param tensor a mode keeps next to the param
EXTRA_DTYPES = {MASTER: torch.float32, REMAINDER: torch.int16}

_MASK32 = 0xFFFFFFFF


class ParamStorage(NamedTuple):
    mode: int
    extras: Optional[List[torch.Tensor]]  # the masters (MASTER) or remainders (REMAINDER), per param
    seed: int
    tensor_indices: Optional[List[int]]  # STOCHASTIC: each param's index among the optimizer's params


def checked_extras(where: str, params: List[torch.Tensor], storage: Optional[ParamStorage]) -> Optional[List[torch.Tensor]]:
    """The masters/remainders of MASTER/REMAINDER storage after checking them against the
    params (one each, float32 / int16, same shape and device), or None."""
    if storage is None or storage.mode not in EXTRA_DTYPES:
        return None
    want, extras = EXTRA_DTYPES[storage.mode], list(storage.extras or [])
    if len(extras) != len(params):
        raise ValueError(f"{where}: {len(extras)} masters/remainders for {len(params)} params")
    for p, x in zip(params, extras):
        if x.dtype != want or x.shape != p.shape or x.device != p.device:
            raise ValueError(f"{where}: a master/remainder of {x.dtype} {tuple(x.shape)} on {x.device} for a param "
                             f"of {tuple(p.shape)} on {p.device} (want {want})")
    return extras


def native_indices(storage: ParamStorage) -> List[int]:
    """The tensor indices as the native modules take them (uint32)."""
    return [int(i) & _MASK32 for i in (storage.tensor_indices or [])]


def pcg(x: torch.Tensor) -> torch.Tensor:
    """PCG's output permutation as a 32-bit hash (Jarzynski and Olano, "Hash Functions for GPU
    Rendering", 2020), on int64 tensors holding 32-bit values."""
    state = (x * 747796405 + 2891336453) & _MASK32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & _MASK32
    return ((word >> 22) ^ word) & _MASK32


def base_keys(seed: int, tensor_indices: List[int]) -> List[int]:
    """Per tensor, the first hash of stochastic rounding's key, hash(seed ^ index * golden
    ratio): the part that does not change from step to step (the triton kernels join the step
    on the device, so a captured graph follows it)."""
    index = torch.tensor([i * 0x9E3779B9 & _MASK32 for i in tensor_indices], dtype=torch.int64)
    return pcg((seed & _MASK32) ^ index).tolist()
