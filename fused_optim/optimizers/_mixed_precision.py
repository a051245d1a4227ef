"""Updates of bf16/fp16 params that do not lose small steps: fp32 master weights, bf16 params
with 16-bit remainders, or stochastic rounding (constructor options of every optimizer).

Updating a bf16 param in place rounds each step's result to bf16, so an update smaller than
half a bf16 ulp is lost and long runs stall. The three options (per param group):

- master_weights: an fp32 copy of each bf16/fp16 param lives in its state ("master_param");
  the step updates the master, and the param becomes the master rounded (4 B per element).
- param_remainders (bf16 only): instead of the copy, the low 16 bits of the fp32 master as an
  int16 state ("param_remainder"); the bf16 param and its remainder are the master's bits, so
  results are bitwise those of master_weights (2 B per element).
- stochastic_rounding (bf16 only, no master): the fp32 result is rounded to bf16 up or down
  with the probabilities that make it unbiased, by a counter-based hash of (seed, step, tensor,
  element): reruns are bitwise identical and nothing depends on how the work is split.

Rounding of params in the master modes: to nearest, ties away from zero (not torch's ties to
even). That is what lets a 16-bit remainder hold every master exactly: with ties to even the
difference master - param spans [-2^15, 2^15], one value more than 16 bits hold. A tie is one
value in 65536, and its rounding error is the same half ulp either way.

How the step runs: the cpu, cuda and triton kernels keep the params in each mode themselves,
in their one pass over the elements (csrc/cpu/param_access.h, csrc/cuda/param_access.cuh,
triton_kernels/param_storage.py: they read the master, or param and remainder, and write
master/remainder and the rounded param; stochastic rounding hashes each element's index with a
key of seed, tensor and step). For the torch backend (and under torch.compile) each
batch is handed fp32 masters (the state, the param joined with its remainder, or a widened
copy) and fp32 copies of the grads, then the params (and remainders) are written from the
updated masters: the same results bit for bit, with extra passes.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import operations
from .._param_storage import OPTION_MODES, ParamStorage, pcg
from ._sharding import local

MASTER = "master_param"
REMAINDER = "param_remainder"
OPTIONS = ("master_weights", "param_remainders", "stochastic_rounding")
LOW_PRECISION = (torch.bfloat16, torch.float16)

_MASK32 = 0xFFFFFFFF
_ABSENT = object()
# the dtypes of these states, whatever state_dtype says
STATE_DTYPES = {MASTER: torch.float32, REMAINDER: torch.int16}


def check_group(group: Dict[str, Any], name: str, index: Optional[int] = None) -> None:
    """The options are flags; remainders and stochastic rounding need bf16 params, and
    stochastic rounding keeps no master (so it excludes the other two)."""
    where = "" if index is None else f" (param group {index})"
    for option in OPTIONS:
        if not isinstance(group.get(option, False), bool):
            raise TypeError(f"{name}: {option} must be True or False{where}, got {group.get(option)!r}")
    if group.get("stochastic_rounding") and (group.get("master_weights") or group.get("param_remainders")):
        raise ValueError(f"{name}: stochastic_rounding rounds the params themselves and keeps no master copy; "
                         f"it cannot be combined with master_weights or param_remainders{where}")
    if group.get("master_weights") and group.get("param_remainders"):
        raise ValueError(f"{name}: choose master_weights (an fp32 copy) or param_remainders (16-bit remainders), "
                         f"not both{where}")
    if not isinstance(group.get("seed", 0), int):
        raise TypeError(f"{name}: seed must be an int{where}, got {group.get('seed')!r}")
    bf16_only = [option for option in ("param_remainders", "stochastic_rounding") if group.get(option)]
    if bf16_only:  # (checked at every step: options are group entries a user may change)
        for p in group.get("params", []):
            if p.dtype != torch.bfloat16:
                raise ValueError(f"{name}: {bf16_only[0]}=True needs bfloat16 params{where}, got a {p.dtype} "
                                 "param (master_weights=True serves fp16; fp32/fp64 params need none of these)")


def mode(group: Dict[str, Any], dtype: torch.dtype) -> Optional[str]:
    """The option that applies to params of this dtype in this group, or None (fp32/fp64
    params ignore master_weights)."""
    if dtype not in LOW_PRECISION:
        return None
    for option in OPTIONS:
        if group.get(option):
            return option
    return None


# ----- bit-level rounding, on int64 views so that nothing overflows ----------------------------

def _bits(x: torch.Tensor) -> torch.Tensor:
    """The fp32 bit pattern as a non-negative int64."""
    return x.view(torch.int32).to(torch.int64) & _MASK32


def _from_bits(bits: torch.Tensor) -> torch.Tensor:
    """fp32 from its bit pattern held in an int64 tensor (0..2^32-1)."""
    signed = torch.where(bits >= 0x80000000, bits - 0x100000000, bits)
    return signed.to(torch.int32).view(torch.float32)


def _to_bf16(bits16: torch.Tensor) -> torch.Tensor:
    """bf16 from its bit pattern held in an int64 tensor (0..65535): the fp32 with those top
    bits converts exactly. (Only 4-byte dtype views: inductor does not compile 2-byte ones.)"""
    return _from_bits(bits16 << 16).to(torch.bfloat16)


def _bf16_bits(param: torch.Tensor) -> torch.Tensor:
    """The bit pattern of a bf16 tensor as int64 (0..65535): the top half of its exact fp32."""
    return _bits(param.float()) >> 16


def _round_bits(master: torch.Tensor, increment: torch.Tensor) -> torch.Tensor:
    """The bf16 bits of master with `increment` (0..65535) added to the magnitude before the low
    16 bits are dropped: 0x8000 rounds to nearest with ties away from zero, a uniform random
    increment rounds stochastically. NaN stays a quiet NaN of the same sign."""
    bits = _bits(master)
    sign = bits & 0x80000000
    magnitude = bits & 0x7FFFFFFF
    rounded = ((magnitude + increment) >> 16) | (sign >> 16)
    nan = magnitude > 0x7F800000
    return torch.where(nan, (sign >> 16) | 0x7FC0, rounded)


def round_nearest(master: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The param a master rounds to (module doc): bf16 by bits, fp16 by torch's conversion
    (no remainders for fp16, so ties to even do)."""
    if dtype == torch.bfloat16:
        return _to_bf16(_round_bits(master, torch.tensor(0x8000, dtype=torch.int64, device=master.device)))
    return master.to(dtype)


def split(master: torch.Tensor):
    """(bf16 param, int16 remainder) whose bits make up the fp32 master exactly."""
    bits16 = _round_bits(master, torch.tensor(0x8000, dtype=torch.int64, device=master.device))
    remainder = _bits(master) - (bits16 << 16)  # in [-2^15, 2^15) with ties away from zero
    nan = (_bits(master) & 0x7FFFFFFF) > 0x7F800000
    remainder = torch.where(nan, torch.zeros_like(remainder), remainder)
    return _to_bf16(bits16), remainder.to(torch.int16)


def join(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """The fp32 master of a bf16 param and its remainder."""
    return _from_bits(((_bf16_bits(param) << 16) + remainder.to(torch.int64)) & _MASK32)


# The step's split and join as torch.library operators: inductor cannot compile their 4-byte
# bit views when it fuses them with the reshapes around them ("make_reindexer NYI on
# DtypeView", torch 2.13), so under torch.compile they stay opaque ops with eager kernels.
@torch.library.custom_op("fused_optim::bf16_join", mutates_args=())
def _join_op(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    return join(param, remainder)


@_join_op.register_fake
def _(param, remainder):
    return torch.empty_like(param, dtype=torch.float32)


@torch.library.custom_op("fused_optim::bf16_split", mutates_args=())
def _split_op(master: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    param, remainder = split(master)
    return param, remainder


@_split_op.register_fake
def _(master):
    return torch.empty_like(master, dtype=torch.bfloat16), torch.empty_like(master, dtype=torch.int16)


def _joined(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    return _join_op(param, remainder) if torch.compiler.is_compiling() else join(param, remainder)


def _splitted(master: torch.Tensor):
    return _split_op(master) if torch.compiler.is_compiling() else split(master)


def random_increments(seed: int, step: torch.Tensor, tensor_index: int, numel: int,
                      device: torch.device) -> torch.Tensor:
    """16 random bits per element, a function of (seed, step, tensor, element) only."""
    key = pcg(torch.tensor((seed & _MASK32) ^ (tensor_index * 0x9E3779B9 & _MASK32), dtype=torch.int64,
                            device=device))
    key = pcg(key ^ (step.to(device=device, dtype=torch.int64) & _MASK32))
    index = torch.arange(numel, dtype=torch.int64, device=device)
    high = pcg(key ^ (index >> 32))
    return pcg(high ^ (index & _MASK32)) >> 16


def round_stochastic(value: torch.Tensor, seed: int, step: torch.Tensor, tensor_index: int) -> torch.Tensor:
    """value (fp32) rounded to bf16 up or down, with probability proportional to closeness."""
    increments = random_increments(seed, step, tensor_index, value.numel(), value.device).reshape(value.shape)
    return _to_bf16(_round_bits(value.contiguous(), increments))


# ----- the step --------------------------------------------------------------------------------

# Backends whose kernels keep the params in each mode themselves, in their one pass
# (csrc/cpu/param_access.h, csrc/cuda/param_access.cuh, triton_kernels/param_storage.py): they
# get the masters/remainders, or the seed and each param's index for stochastic rounding, as a
# ParamStorage (fused_optim/_param_storage.py) instead of fp32 copies.
FUSED_BACKENDS = ("cpu", "cuda", "triton")


class ParamStorageStep:
    """Prepares the bf16/fp16 params of batches whose group uses an option. Backends that fuse
    the modes (FUSED_BACKENDS, in eager mode, contiguous params) get the master/remainder
    states or the rounding seed and param indices as a ParamStorage (batch.storage): one
    pass reads and writes everything. For the others the params are swapped for fp32 masters (and their
    grads for fp32 copies) before the update, and written back after it (finish)."""

    def __init__(self, optimizer, batches: List[Any]):
        self.jobs = []
        # (param, state, key, value before or _ABSENT): what undo() restores
        self.replaced: List[tuple] = []
        self.index: Dict[int, int] = {}  # id(param) -> its place among all params: stochastic rounding's key
        for batch in batches:
            option = mode(batch.group, batch.tensors[0].dtype) if batch.tensors else None
            if option is None or batch.plan is not None:  # (a step plan's batch has its storage)
                continue
            if (batch.backend in FUSED_BACKENDS and operations.plain_eager()
                    and all(p.is_contiguous() for p in batch.tensors)):
                self._fuse(optimizer, batch, option)
                continue
            masters, steps = [], []
            for key, p in zip(batch.params, batch.tensors):
                state = optimizer.state[key]
                if option == "master_weights":
                    masters.append(local(self._master(state, key)))
                elif option == "param_remainders":
                    masters.append(_joined(p, local(self._remainder(state, key, p))))
                else:
                    masters.append(p.to(torch.float32))
                    steps.append(optimizer.step_number(state))
                    self._index_params(optimizer)
            self.jobs.append((batch, option, list(batch.tensors), masters, steps))
            batch.tensors = masters
            batch.grads = [g.to(torch.float32) for g in batch.grads]

    def _fuse(self, optimizer, batch, option: str) -> None:
        extras: Optional[List[torch.Tensor]] = None
        indices: Optional[List[int]] = None
        if option == "master_weights":
            extras = [local(self._master(optimizer.state[key], key)) for key in batch.params]
        elif option == "param_remainders":
            extras = [local(self._remainder(optimizer.state[key], key, p)) for key, p in zip(batch.params, batch.tensors)]
        else:  # the kernels hash (seed, index, the step each tensor takes, element) themselves
            self._index_params(optimizer)
            indices = [self.index[id(key)] for key in batch.params]
        batch.storage = ParamStorage(OPTION_MODES[option], extras, int(batch.group.get("seed", 0)), indices)

    def _master(self, state: Dict[str, Any], key: torch.Tensor) -> torch.Tensor:
        if MASTER not in state:  # first step, or a checkpoint saved without masters
            self._remember(key, state)
            state[MASTER] = (_joined(key.detach(), state.pop(REMAINDER)) if REMAINDER in state
                             else key.detach().to(torch.float32, memory_format=torch.preserve_format))
        return state[MASTER]

    def _remainder(self, state: Dict[str, Any], key: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if REMAINDER not in state:  # from a checkpoint's masters where there are any
            self._remember(key, state)
            state[REMAINDER] = (_splitted(state.pop(MASTER))[1] if MASTER in state and p.dtype == torch.bfloat16
                                else torch.zeros_like(key, dtype=torch.int16, memory_format=torch.preserve_format))
        return state[REMAINDER]

    def _index_params(self, optimizer) -> None:
        if not self.index:
            self.index = {id(q): i for i, q in enumerate(q for g in optimizer.param_groups for q in g["params"])}

    def _remember(self, param: torch.Tensor, state: Dict[str, Any]) -> None:
        for key in (MASTER, REMAINDER):
            self.replaced.append((param, state, key, state.get(key, _ABSENT)))

    def undo(self, keep=frozenset()) -> None:
        """Restores the states this step created or converted for params whose id is not in
        `keep` (a step that raised before their update: Adai's error_if_nonfinite check
        follows its fused norm pass; a batch after a failed one)."""
        for param, state, key, value in reversed(self.replaced):
            if id(param) in keep:
                continue
            if value is _ABSENT:
                state.pop(key, None)
            else:
                state[key] = value
        self.replaced.clear()

    def finish_batch(self, optimizer, updated) -> None:
        """Writes the params of one updated batch from their masters (unfused path)."""
        for batch, option, params, masters, steps in self.jobs:
            if batch is not updated:
                continue
            with torch.no_grad():
                for i, (key, p, master) in enumerate(zip(batch.params, params, masters)):
                    if option == "master_weights":
                        p.copy_(round_nearest(master, p.dtype))
                    elif option == "param_remainders":
                        param, remainder = _splitted(master)
                        p.copy_(param)
                        local(optimizer.state[key][REMAINDER]).copy_(remainder)
                    else:
                        p.copy_(round_stochastic(master, batch.group.get("seed", 0), steps[i],
                                                 self.index[id(key)]))
