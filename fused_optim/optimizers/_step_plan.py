"""The step plan: what a param group's step needs that does not change from step to step,
prepared once and reused while it stays valid, so that a step over thousands of tensors costs
little host time per tensor (eager steps of the fused backends: cpu, cuda, triton).

A plan is made after a step of the group went the full way (FusedOptimizer._collect: every
check, the states made): which params had a grad and how they split into batches, the tensors
the kernels update, each param's state dict and the state tensors the calls read (columns),
the backend and the param storage; each operation's address lists (_staging.Prepared) are
taken at the first call that uses them.

At every step the plan is compared with what could have changed since; on any difference the
step of that group goes the full way again (which raises on bad input, or makes a new plan):
- the group's settings that shape its batches (signature) and its param count, and the param
  count of the groups before it (stochastic rounding keys each param by its overall index);
- which params have a grad, and each grad's dtype, shape, device and layout (contiguous);
- each param's address: new data (.data =, a growing resize, a move) has a new one; a resize
  that shrinks a param in place keeps its address and is caught by its grad, whose shape must
  be the plan's (torch's grad setter takes only a grad of the param's new shape; a grad given
  the old shape through .data is a write torch does not check either, and is not caught);
- each param's state dict, looked up in the optimizer's state (a state replaced by
  load_state_dict or by hand), and the address of every state tensor the calls read (a state
  tensor replaced in its dict, or given new data).
No plan is made or used while a ZeRO partition is registered (fused_optim.zero.attach can
change a param's shard group, which decides whether its norm and Adai's mean are all-reduced):
those steps hand over a few flat tensors, where a plan saves nothing.
The plan holds the tensors it was made from, so their memory stays allocated: an unchanged
address is the memory the plan was made for, never another tensor's. What is read per step:
the grads (their addresses go into the calls), the addresses above and the hyperparameters.
"""
import operator
from itertools import repeat
from typing import Any, Dict, List, Optional

import torch

from .._staging import Prepared
from . import _mixed_precision as mixed
from ._sharding import _PLAIN

_TENSOR = torch._C.TensorBase
_GRAD = operator.attrgetter("grad")
_DTYPE = _TENSOR.dtype.__get__
_SHAPE = _TENSOR.shape.__get__
_ADDRESS = _TENSOR.data_ptr
_CONTIGUOUS = _TENSOR.is_contiguous
_DEVICE_INDEX = _TENSOR.get_device

# the backends whose calls take address lists (Prepared)
FUSED_BACKENDS = ("cpu", "cuda", "triton")
# group entries besides the params and hyperparameters that decide a group's batches, states
# and param storage
SHAPING_OPTIONS = ("state_dtype", "capturable", *mixed.OPTIONS, "seed")
# what a changed grad, param or state makes the checks below raise (a None grad has no dtype,
# a removed state no key, a sparse grad no strides): the step then goes the full way
_CHANGED = (AttributeError, KeyError, RuntimeError, TypeError)


def signature(optimizer, group: Dict[str, Any], hyper: Dict[str, Any]) -> tuple:
    """What a plan of this group depends on besides its params and their states."""
    return (optimizer._backend_request, tuple(optimizer.state_layout(hyper)),
            *(group.get(key) for key in SHAPING_OPTIONS))


class BatchPlan:
    """The prepared part of one batch (base.Batch) of a group."""

    def __init__(self, batch, positions: Optional[List[int]], state_keys: List[str]):
        self.positions = positions  # the batch's params among the group's (None: all of them)
        self.backend, self.impl, self.storage = batch.backend, batch.impl, batch.storage
        self.tensors = list(batch.tensors)
        self.dtype = self.tensors[0].dtype
        self.device_index = self.tensors[0].get_device()
        self.shapes = list(map(_SHAPE, self.tensors))
        self.addresses = list(map(_ADDRESS, self.tensors))
        self.states = list(batch.states)
        self.columns = {key: [state[key] for state in self.states] for key in state_keys}
        self.column_addresses = {key: list(map(_ADDRESS, column)) for key, column in self.columns.items()}
        self.prepared: Dict[str, Prepared] = {}
        # what an optimizer keeps with the plan between its steps (Adai: the versions of
        # exp_avg_sq its carried sums were taken of)
        self.extra: Dict[str, Any] = {}

    def grad_addresses(self, params: List[torch.Tensor], grads: List[torch.Tensor], state_of) -> Optional[List[int]]:
        """This step's grad addresses when nothing the plan depends on changed, else None."""
        dtype, device_index = self.dtype, self.device_index
        if not all(map(operator.is_, map(_DTYPE, grads), repeat(dtype))):
            return None
        if list(map(_SHAPE, grads)) != self.shapes or not all(map(_CONTIGUOUS, grads)):
            return None
        if any(map(operator.ne, map(_DEVICE_INDEX, grads), repeat(device_index))):
            return None
        if list(map(_ADDRESS, params)) != self.addresses:
            return None
        if not all(map(operator.is_, map(state_of, params), self.states)):
            return None
        for key, addresses in self.column_addresses.items():
            if list(map(_ADDRESS, map(operator.itemgetter(key), self.states))) != addresses:
                return None
        return list(map(_ADDRESS, grads))

    def prepared_call(self, declaration, lists, grad_addresses: List[int]) -> Prepared:
        """The operation's prepared address lists (taken from `lists`, the batch's cached
        columns, at its first call) with this step's grads."""
        prepared = self.prepared.get(declaration.name)
        if prepared is None:
            extras = self.storage.extras if self.storage is not None else None
            prepared = Prepared(declaration, lists, extras)
            self.prepared[declaration.name] = prepared
        return prepared.for_grads(grad_addresses)


class GroupPlan:
    """A param group's plan: its batches' prepared parts and what they were made under."""

    def __init__(self, group: Dict[str, Any], offset: int, signature_: tuple, has_grad: List[bool],
                 batches: List[BatchPlan]):
        self.group, self.offset, self.signature = group, offset, signature_
        self.count = len(group["params"])
        self.has_grad = has_grad
        self.batches = batches

    def matches(self, group: Dict[str, Any], offset: int, signature_: tuple) -> bool:
        return (group is self.group and offset == self.offset and len(group["params"]) == self.count
                and signature_ == self.signature)

    def batch_parts(self, state_of) -> Optional[list]:
        """[(batch plan, params, grads, grad addresses)] of this step when the plan still
        holds, else None (the group's step goes the full way)."""
        params = self.group["params"]
        try:
            grads = list(map(_GRAD, params))
            if list(map(operator.is_not, grads, repeat(None))) != self.has_grad:
                return None
            parts = []
            for plan in self.batches:
                if plan.positions is None:
                    mine, my_grads = params, grads
                else:
                    mine = [params[i] for i in plan.positions]
                    my_grads = [grads[i] for i in plan.positions]
                addresses = plan.grad_addresses(mine, my_grads, state_of)
                if addresses is None:
                    return None
                parts.append((plan, mine, my_grads, addresses))
            return parts
        except _CHANGED:
            return None


def plannable(batch, state_keys: List[str]) -> bool:
    """Whether a batch that has just been stepped can be planned: a fused backend that keeps
    the params itself (their storage mode included), plain (unsharded) params, and params,
    grads and every state it reads contiguous (the prepared path stages nothing)."""
    if batch.backend not in FUSED_BACKENDS or batch.shard_group is not None or batch.strided or batch.staged:
        return False
    if batch.storage is None and mixed.mode(batch.group, batch.params[0].dtype):
        return False  # its kernels update fp32 copies made for each step (the unfused storage path)
    if not all(type(p) in _PLAIN for p in batch.params):
        return False
    if not (all(map(_CONTIGUOUS, batch.tensors)) and all(map(_CONTIGUOUS, batch.grads))):
        return False
    for key in state_keys:
        if key != "step" and not all(state[key].is_contiguous() for state in batch.states):
            return False
    return batch.storage is None or not batch.storage.extras or all(map(_CONTIGUOUS, batch.storage.extras))
