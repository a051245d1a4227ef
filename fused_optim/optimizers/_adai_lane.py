"""Adai's step lane: its two passes in a few native calls while the step plans hold (the checks
every lane makes are _step_lane.py's).

Adai's general step costs more host time than a one-pass step: two operations per batch, each
through the keyword plumbing, the carried sums checked, the mean of vhat taken in 0-dim
tensors. On a small model that is most of the step, several times torch's whole fused AdamW
step (bench/NOTES.md has the numbers). The lane runs what the general path runs on
planned batches, in the same order and arithmetic:
- before anything: each batch's carried sums are its plan's column, and every exp_avg_sq is as
  the last update left it (the versions Adai._keep_sums recorded; else the general path reads
  exp_avg_sq again); a sum that is NaN (not known) also leaves the step to the general path;
- pass 1 per batch (the kept Call with this step's grads, counts and sums), then the mean of
  vhat: the batches' sums added in order, over the element count, in float64 as global_mean
  does with its 0-dim tensors (IEEE double either way: the same bits);
- per batch, as one unit under a held Ctrl-C: the update (the kept Call with this step's
  grads, counts and mean; it stores the new sums in the column), the version counters of what
  it wrote (the carried sums included), the versions the next step checks, the step counters.
It is made after a step whose batches all used a plan whose carried sums are a column, only
where Adai would take no other way (no clipping, no GradScaler, no ZeRO partition: make()).
"""
import math
import operator
from typing import List, Optional

import torch

from .. import operations
from . import adai as _adai  # (adai.py imports this module: its names are looked up when used)
from ._sharding import element_count
from ._step_lane import StepLane
from ._uninterrupted import HeldInterrupts

_VERSION = operator.attrgetter("_version")


class _KeptBatch:
    """What the lane keeps of one planned batch: its two Calls and their hyperparameters, the
    counters, the carried sums and the exp_avg_sq they are the sums of, and what the update
    writes."""

    def __init__(self, plan, pass1, update, pass1_hyper, hyper, count: int):
        from ..cpu_backend import PASS1_ROLES  # (only batches the cpu backend ran are kept)

        self.plan = plan
        self.pass1_call = pass1.kept["adai_second_moment"]
        self.pass1_grads_role = PASS1_ROLES.index("grads")
        self.update_call = update.kept["adai_update"]
        self.pass1_hyper, self.hyper = pass1_hyper, hyper
        self.grads_role = update.grads_role
        self.step_addresses = update.step_addresses
        self.sum_addresses = plan.column_addresses[_adai.V_SUM]
        self.exp_avg_sqs = plan.columns["exp_avg_sq"]
        self.written = list(update.mutated) + list(plan.columns[_adai.V_SUM])
        self.count = count


class AdaiLane(StepLane):
    """See the module's docstring."""

    @classmethod
    def kept_calls(cls, optimizer, batch) -> Optional[_KeptBatch]:
        plan = batch.plan
        pass1 = plan.prepared.get("adai_second_moment")
        update = plan.prepared.get("adai_update")
        if (pass1 is None or update is None or "adai_second_moment" not in pass1.kept
                or "adai_update" not in update.kept):
            return None
        # the update just stored its sums in the plan's column (Adai._keep_sums recorded it)
        if _adai.V_SUM not in plan.columns or plan.extra.get(_adai.V_SUM) is None:
            return None
        return _KeptBatch(plan, pass1, update, _adai.pass1_hyper(batch.hyper), dict(batch.hyper),
                          element_count(batch.params, batch.tensors))

    def _run(self, optimizer, parts) -> bool:
        V_SUM = _adai.V_SUM
        native, threads = self.native, torch.get_num_threads()
        work: List[tuple] = []
        for plan, _, _, grad_addresses in parts:
            kept = self.calls[id(plan)]
            if list(map(_VERSION, kept.exp_avg_sqs)) != plan.extra.get(V_SUM):
                return False
            sums = native.read_sums(kept.sum_addresses)
            # the sums are of exp_avg_sq >= 0: NaN in their total means one is NaN (not known)
            if math.isnan(sum(sums)):
                return False
            work.append((kept, grad_addresses, sums))
        total, count = None, 0
        for kept, grad_addresses, sums in work:
            call = kept.pass1_call
            call.v_sums = sums
            (part,) = native.step_planned("adai_second_moment", call, kept.pass1_grads_role, grad_addresses,
                                          kept.step_addresses, 0.0, threads, 1.0, kept.pass1_hyper)
            total = part if total is None else total + part
            count += kept.count
        if total is None:
            return True
        vbar = total / count if count else total
        with HeldInterrupts():
            for kept, grad_addresses, _ in work:
                call = kept.update_call
                call.vbar = vbar
                native.step_planned("adai_update", call, kept.grads_role, grad_addresses, kept.step_addresses, 0.0,
                                    threads, 1.0, kept.hyper)
                operations.bump_versions(kept.written)
                kept.plan.extra[V_SUM] = list(map(_VERSION, kept.exp_avg_sqs))
                native.advance_counters(kept.step_addresses)
        return True
