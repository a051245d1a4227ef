"""The step lane: a whole step of the cpu backend in a few calls, while every group's step
plan (_step_plan.py) holds and nothing around the plans asks for more.

A planned step still walks the general path: per group its hyperparameters, options and
signature, per batch a Batch, the operation's keyword plumbing, a scaling, a Ctrl-C hold, a
commit. That is tens of microseconds of Python per step, a large share of a step over one
tensor of 64K elements, and more than that right after a forward and backward pass, whose
data has pushed the interpreter's own code and objects out of the caches. The lane keeps
what those layers work out, and per step checks only what could make it wrong:
- the optimizer's plans are still the lane's (any step that went the full way, a
  load_state_dict or an add_param_group replaces or drops them), and no ZeRO partition is
  registered (plans are not used then);
- no GradScaler scale or inf flag is set on the optimizer, and the backend asked for is the
  same;
- each group is the same dict with the same keys holding the very same (immutable) values,
  and as many params;
- each group plan's own checks (GroupPlan.batch_parts: the grads, the params' addresses, the
  states); a group that had no grads at all when the lane was made must still have none.
On any difference the step goes the general way (which raises on bad input, or makes new
plans) and the lane is made again after it where it can be.

It is made after a whole step that used a plan for every batch, where every batch runs on the
cpu backend, no group clips (max_grad_norm) and every group's values are immutable
(FusedOptimizer._group_hyper cached them). OnePassLane serves the one-pass update with
per-param step counters (Adam/AdamW, AdaMomentum, Lion) or one global step (DualAdam,
InvAdam: counts_steps_globally); a class may name its own (step_lane: Adai's two passes,
_adai_lane.py). A step through OnePassLane writes what the general path
writes, in the same order: per batch the native update (the Call the cpu backend kept, with
this step's grads and counts), the version counters of what it wrote, the step counters (or
the global step once, after every batch); a Ctrl-C is held back until all of it is done.
"""
import operator
from abc import ABC, abstractmethod
from itertools import repeat
from typing import Any, Dict, List, Optional

import torch

from .. import operations
from ._clipping import clip_settings
from ._sharding import partitions_registered
from ._uninterrupted import HeldInterrupts

_GRAD = operator.attrgetter("grad")


def _has_grads(params) -> bool:
    return not all(map(operator.is_, map(_GRAD, params), repeat(None)))


def _scaled(optimizer) -> bool:
    """Whether GradScaler handed this step its scale or inf flag (the general path reads them)."""
    return getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None


class _GroupEntry:
    """A group as the lane was made for it: its dict, keys and values, param count, plan
    (None: a group that had no grads, which must still have none)."""

    def __init__(self, group: Dict[str, Any], plan):
        self.group = group
        self.keys = tuple(group)
        self.values = list(group.values())
        self.count = len(group["params"])
        self.plan = plan

    def holds(self, group: Dict[str, Any]) -> bool:
        if group is not self.group or len(group["params"]) != self.count or tuple(group) != self.keys:
            return False
        values = list(group.values())
        return len(values) == len(self.values) and all(map(operator.is_, values, self.values))


def counts_steps_globally(cls) -> Optional[bool]:
    """How a class's steps can take the lane: False for the one-pass update with per-param
    step counters (FusedOptimizer._update), True for a one-pass update with one global step
    that advances once per step (a class that says so: DualAdam), None where the one-pass
    lane does not apply (Adai's two passes: its own lane, _adai_lane.py)."""
    from .base import FusedOptimizer

    if cls._update is FusedOptimizer._update and cls.per_param_step:
        return False
    if getattr(cls, "one_pass_with_global_step", False):
        return True
    return None


class StepLane(ABC):
    """A lane of one optimizer: the checks every lane makes (see the module's docstring);
    a subclass runs the step (_run) with the native Calls it kept (kept_calls)."""

    def __init__(self, optimizer, groups: List[_GroupEntry], calls: Dict[int, Any]):
        self.groups = groups
        # id(batch plan) -> what kept_calls returned for it
        self.calls = calls
        self.backend_request = optimizer._backend_request
        from .. import _cpu  # (made only for batches the cpu backend ran: the module is there)

        self.native = _cpu

    @classmethod
    @abstractmethod
    def kept_calls(cls, optimizer, batch) -> Optional[Any]:
        """What the lane keeps of a batch the cpu backend has just stepped with a plan, or
        None when a call it needs was not kept."""

    def step(self, optimizer) -> bool:
        """Takes the step through the lane and returns True, or returns False having read
        and written nothing when the general path must take it."""
        parts = self._checked_parts(optimizer)
        return parts is not None and self._run(optimizer, parts)

    def _checked_parts(self, optimizer) -> Optional[list]:
        """The batch parts of this step (GroupPlan.batch_parts), or None when a check fails."""
        groups = optimizer.param_groups
        if (not operations.plain_eager() or len(groups) != len(self.groups)
                or optimizer._backend_request != self.backend_request or _scaled(optimizer) or partitions_registered()):
            return None
        plans = optimizer._plans
        state_of = optimizer.state.get
        parts = []
        for index, (group, entry) in enumerate(zip(groups, self.groups)):
            if not entry.holds(group):
                return None
            if entry.plan is None:
                if _has_grads(group["params"]):
                    return None
                continue
            if plans.get(index) is not entry.plan:
                return None
            mine = entry.plan.batch_parts(state_of)
            if mine is None:
                return None
            parts += mine
        return parts

    @abstractmethod
    def _run(self, optimizer, parts: list) -> bool:
        """The step over the checked parts; False (nothing written) where it finds a reason
        to leave it to the general path after all."""


class OnePassLane(StepLane):
    """The one-pass update: per batch one native call of the optimizer's operation."""

    def __init__(self, optimizer, groups, calls):
        super().__init__(optimizer, groups, calls)
        self.global_step = counts_steps_globally(type(optimizer))

    @classmethod
    def kept_calls(cls, optimizer, batch):
        """(operation, kept native Call, hyperparameters, its Prepared)."""
        name = optimizer.operation
        prepared = batch.plan.prepared.get(name)
        if prepared is None or name not in prepared.kept:
            return None
        return name, prepared.kept[name], dict(batch.hyper), prepared

    def _run(self, optimizer, parts):
        counter = optimizer._global_step if self.global_step else None
        if counter is not None and not counter.is_cpu:
            return False
        native, threads, calls = self.native, torch.get_num_threads(), self.calls
        count = float(counter) if counter is not None else 0.0
        with HeldInterrupts():
            done = 0
            try:
                for plan, _, _, grad_addresses in parts:
                    name, call, hyper, prepared = calls[id(plan)]
                    native.step_planned(name, call, prepared.grads_role, grad_addresses, prepared.step_addresses or [],
                                        count, threads, 1.0, hyper)
                    operations.bump_versions(prepared.mutated)
                    if counter is None:
                        native.advance_counters(prepared.step_addresses)
                    done += 1
            except BaseException:
                if done and counter is not None:
                    optimizer._partial_step_done()
                raise
            if counter is not None:
                optimizer._advance([counter])
        return True


def lane_class(cls):
    """The lane a class's steps can take: its own (step_lane: Adai's two passes), the
    one-pass lane (counts_steps_globally), or None."""
    own = getattr(cls, "step_lane", None)
    if own is not None:
        return own
    return OnePassLane if counts_steps_globally(cls) is not None else None


def make(optimizer, batches) -> Optional[StepLane]:
    """The lane after a whole step whose batches all used a plan, or None where the lane does
    not apply (see the module's docstring)."""
    lane = lane_class(type(optimizer))
    if lane is None or _scaled(optimizer) or partitions_registered():
        return None
    if clip_settings(optimizer.param_groups, type(optimizer).__name__)[0] is not None:
        return None
    plans = optimizer._plans
    groups = []
    for index, group in enumerate(optimizer.param_groups):
        entry = _GroupEntry(group, plans.get(index))
        cached = optimizer._hypers.get(index)
        if (cached is None or len(cached[0]) != len(entry.values)
                or not all(map(operator.is_, entry.values, cached[0]))):
            return None  # a value that is not immutable (a tensor lr) is validated at every step
        if entry.plan is None and _has_grads(group["params"]):
            return None
        groups.append(entry)
    kept = {}
    for b in batches:
        calls = lane.kept_calls(optimizer, b) if b.backend == "cpu" and b.plan is not None else None
        if calls is None:
            return None
        kept[id(b.plan)] = calls
    # every batch of every plan is one this step ran (so its calls are kept)
    if any(id(part) not in kept for entry in groups if entry.plan is not None for part in entry.plan.batches):
        return None
    return lane(optimizer, groups, kept)
