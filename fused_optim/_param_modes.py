"""The param-mode arguments the cuda and triton backends take from
_mixed_precision.MasterStep (eager steps only): how a call's bf16/fp16 params are kept.

param_mode 1: fp32 masters, 2: int16 remainders (param_extras: one per param), 3: rounded
stochastically by a hash of the seed, each param's index among all the optimizer's params
(tensor_indices), its step and the element (csrc/include/fused_optim/math/rounding.h). With a
mode the backend calls its launch function directly; plain calls go through its custom op
(the ops' schemas carry no mode: under torch.compile MasterStep takes the unfused path).
"""
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

PLAIN: Dict[str, object] = dict(param_mode=0, param_extras=None, seed=0, tensor_indices=None)
EXTRA_DTYPES = {1: torch.float32, 2: torch.int16}


class Mixed(NamedTuple):
    param_mode: int
    extras: Optional[List[torch.Tensor]]
    seed: int
    tensor_indices: Optional[List[int]]


def mixed_from(param_mode=0, param_extras=None, seed=0, tensor_indices=None) -> Optional[Mixed]:
    return Mixed(int(param_mode), param_extras, int(seed), tensor_indices) if param_mode else None


def checked_extras(where: str, params: List[torch.Tensor], mixed: Optional[Mixed]) -> Optional[List[torch.Tensor]]:
    """The masters/remainders of modes 1/2 after checking them against the params (one each,
    float32 / int16, same shape and device), or None."""
    if mixed is None or mixed.param_mode not in EXTRA_DTYPES:
        return None
    want, extras = EXTRA_DTYPES[mixed.param_mode], list(mixed.extras or [])
    if len(extras) != len(params):
        raise ValueError(f"{where}: {len(extras)} masters/remainders for {len(params)} params")
    for p, x in zip(params, extras):
        if x.dtype != want or x.shape != p.shape or x.device != p.device:
            raise ValueError(f"{where}: a master/remainder of {x.dtype} {tuple(x.shape)} on {x.device} for a param "
                             f"of {tuple(p.shape)} on {p.device} (want {want})")
    return extras


def run(op: Callable, launch: Callable, args: tuple, mode_kwargs: Dict[str, object], call: Callable):
    """A plain call through the custom op (`call`: _dispatch.call), a mode's call straight to
    the launch function."""
    mixed = mixed_from(**{**PLAIN, **mode_kwargs})
    if mixed is None:
        return call(op, *args)
    return launch(*args, mixed=mixed)
