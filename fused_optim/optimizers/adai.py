"""Adai (Xie et al., "Adaptive Inertia: Disentangling the Effects of Adaptive Learning Rate
and Momentum"): per-element inertia beta1 = clamp(1 - beta0 vhat / mean(vhat), 0, 1 - eps),
where the mean runs over every element of every param with a grad, in all groups."""
import math
import operator

import torch
from typing_extensions import Unpack

from . import _validation as check
from ._clipping import NORM_EPS, clip_settings
from ._adai_lane import AdaiLane
from ._options import FusedOptions
from ._sharding import (element_count, empty_part_device, global_clip_sums, global_mean, is_distributed_tensor,
                        partition_group, zero_caller)
from .base import FusedOptimizer

# The state key of a param's sum(exp_avg_sq) as the last update pass of a backend that keeps
# it left it (a 0-dim float64 CPU tensor): the cpu backend's pass 1 then reads only the grads
# (csrc/cpu/adai.cpp). Only the cpu backend keeps it: the others read exp_avg_sq in their own
# pass 1, so keeping it would cost them one more read of it per step (and on a GPU a wait for
# the device) for nothing; after their update it is dropped, and the next cpu step reads
# exp_avg_sq once.
V_SUM = "exp_avg_sq_sum"
_KEEPS_V_SUM = ("cpu",)


def pass1_hyper(hyper):
    """The hyperparameters of pass 1 (adai_second_moment) from a group's."""
    return dict(beta2=hyper["beta2"], weight_decay=hyper["weight_decay"], decoupled=hyper["decoupled"])


class Adai(FusedOptimizer):
    """State: step, exp_avg, exp_avg_sq, beta1_prod (starts at ones), as in the authors' code;
    with the cpu backend also exp_avg_sq_sum, the sum of exp_avg_sq (0-dim float64) that its
    next step starts from instead of reading exp_avg_sq. A torch op that writes exp_avg_sq in
    place (zero_, mul_, copy_) or a new exp_avg_sq tensor makes the next step read it again; a
    write torch does not see (through .data, a numpy view) does not: delete
    state[p]["exp_avg_sq_sum"] after one.
    lr is SGD-scale (0.1-1). eps bounds the inertia (beta1 <= 1 - eps); it is not a denominator
    term. decoupled=False: L2 (g_eff = g + wd p, p.grad itself is not modified);
    decoupled=True (AdaiW): p *= 1 - lr wd before the update."""

    state_initial_values = {"exp_avg": 0.0, "exp_avg_sq": 0.0, "beta1_prod": 1.0}
    # beta1_prod stays fp32 with state_dtype=bf16: it starts at 1 and is a product of factors
    # up to 1 - eps = 0.999, but bf16 has no value in (1 - 2^-9, 1): 0.999 rounds to 1, then
    # 1 - beta1_prod = 0 and the update divides by zero (tests/test_state_dtype.py shows it)
    math_dtype_states = ("beta1_prod",)
    # with max_grad_norm, Adai's reduction pass also takes the grad norm (_clipped_mean_vhat)
    fuses_grad_norm = True
    # betas[0] is beta0, the inertia's scale, not a momentum for OneCycleLR/CyclicLR to cycle
    hidden_from_schedulers = ("betas",)
    # the step of planned cpu batches (_adai_lane.py)
    step_lane = AdaiLane

    def __init__(self, params, lr, betas=(0.1, 0.99), eps=1e-3, weight_decay=0.0, decoupled=False,
                 **options: Unpack[FusedOptions]):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        self.hyper(defaults, None)
        super().__init__(params, defaults, **options)

    def hyper(self, group, index):
        beta0, beta2 = check.betas_pair(group["betas"], index)
        return dict(
            lr=check.non_negative("lr", group["lr"], index),
            beta0=check.in_range("betas[0]", beta0, 0.0, 1.0, group_index=index),
            beta2=check.in_range("betas[1]", beta2, 0.0, 1.0, high_open=True, group_index=index),
            # eps > 0 keeps 1 - beta1_prod > 0: with eps = 0 a zero-grad run divides 0 by 0
            eps=check.in_range("eps", group["eps"], 0.0, 1.0, low_open=True, group_index=index),
            weight_decay=check.non_negative("weight_decay", group["weight_decay"], index),
            decoupled=check.flag("decoupled", group["decoupled"], index),
        )

    def _init_transient(self):
        super()._init_transient()
        # id(state) -> (id, address, version) of the exp_avg_sq its carried sum was taken of:
        # an in-place write through torch (zero_, mul_, copy_) or a new tensor makes the sum
        # stale, and the next cpu step then reads exp_avg_sq again. (Only for this: a copy of
        # the optimizer starts without it and reads each exp_avg_sq once.)
        self._v_sum_of = {}

    def _update(self, batches):
        if self._zero_checked(batches) or not batches:
            return
        max_norm, norm_type, _ = clip_settings(self.param_groups, type(self).__name__)
        work = [(b, states, b.column("step"), self._carried_sums(b, states))
                for b in batches for states in [self._states(b)]]
        if max_norm is None:
            vbar = self._mean_vhat(work)
        else:
            vbar = self._clipped_mean_vhat(work, norm_type)
        scaling = self.scaling()
        for b, states, steps, v_sums in work:
            lists = [b.tensors, b.grads, b.column("exp_avg"), b.column("exp_avg_sq"), b.column("beta1_prod"), steps]
            b.impl.adai_update(*lists, vbar=vbar, **b.hyper, **scaling, v_sums=v_sums, storage=b.storage,
                               prepared=self._prepared(b, "adai_update", lists))
            self._keep_sums(b.params, states, v_sums, b)
            self._commit_steps(b, states)

    def _zero_checked(self, batches) -> bool:
        """Under ZeRO the params are this rank's partition, and the mean is right only over all
        of them: a step inside a ZeRO wrapper the partition was not registered for
        (fused_optim.zero.attach) raises, before anything is written; a rank without grads
        takes part in the collective with zeros (the others wait for it), and then returns
        True (nothing else to do)."""
        name = type(self).__name__
        group = partition_group(self)
        if group is None:
            wrapper = None if torch.compiler.is_compiling() else zero_caller()
            if wrapper is not None:
                raise RuntimeError(
                    f"{name} steps inside {wrapper} on this rank's partition of the params, but its mean of vhat "
                    "runs over every element of every param: call fused_optim.zero.attach(<the engine or "
                    "ZeroRedundancyOptimizer>) once after creating it, so that the mean is all-reduced over the "
                    "data-parallel group")
            return False
        stray = [b for b in batches if b.shard_group is not group]
        if stray:
            raise RuntimeError(
                f"{name}: {sum(len(b.params) for b in stray)} param(s) with a grad are not part of the ZeRO partition "
                "fused_optim.zero.attach registered (added after it?): call fused_optim.zero.attach again")
        if batches:
            return False
        max_norm, norm_type, _ = clip_settings(self.param_groups, name)
        device = empty_part_device(group)
        if max_norm is None:
            global_mean([(group, torch.zeros((), dtype=torch.float64, device=device), 0)])
        else:  # the norm part that combines with any other as its identity (0; inf for a min)
            none = torch.zeros(4, dtype=torch.float64, device=device)
            if math.isinf(norm_type) and norm_type < 0:
                none[0] = math.inf
            global_clip_sums([(group, none, 0)], norm_type)
        return True

    def _load_state_dict(self, state_dict):
        """The carried sums are one number per param, not states of its shape: taken out before
        the base class checks and converts the states, and put back where the loaded
        exp_avg_sq is the one that was summed. A dict without them (the authors', torch's, an
        older one of ours), or whose exp_avg_sq is converted to another dtype on loading,
        leaves them to be read from exp_avg_sq at the next cpu step."""
        sums, stripped = {}, dict(state_dict)
        if isinstance(state_dict.get("state"), dict):
            stripped["state"] = {}
            for param_id, saved in state_dict["state"].items():
                if isinstance(saved, dict) and V_SUM in saved:
                    sums[param_id] = (_loaded_sum(saved[V_SUM], param_id), saved.get("exp_avg_sq"))
                    saved = {key: value for key, value in saved.items() if key != V_SUM}
                stripped["state"][param_id] = saved
        super()._load_state_dict(stripped)
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups):
            for param_id, p in zip(saved_group["params"], group["params"]):
                total, summed = sums.get(param_id, (None, None))
                v = self.state[p].get("exp_avg_sq") if total is not None else None
                if v is not None and torch.is_tensor(summed) and summed.dtype == v.dtype:
                    self._keep_sums([p], [self.state[p]], [total])

    def _mean_vhat(self, work):
        """Pass 1 over every batch of every group: the mean of vhat over every element of every
        param with a grad, on all ranks when params are sharded (sums in a fixed order)."""
        parts = []
        for b, states, steps, v_sums in work:
            lists = [b.tensors, b.grads, b.column("exp_avg_sq"), steps]
            part = b.impl.adai_second_moment(
                *lists, **pass1_hyper(b.hyper), **self.scaling(), v_sums=v_sums, storage=b.storage,
                prepared=self._prepared(b, "adai_second_moment", lists))
            parts.append((b.shard_group, part, element_count(b.params, b.tensors)))
        return global_mean(parts)

    def _clipped_mean_vhat(self, work, norm_type):
        """Pass 1 with max_grad_norm: ONE pass over g and v (and p with L2) yields both the total
        grad norm and the mean of vhat, which depends on the clip coefficient c the norm gives:
        each batch returns its norm part and sum(vhat) as a quadratic in c (adai_clip_sums), so
        the three passes of clip_grad_norm_ + Adai (norm: read g; pass 1: read g, v; the
        rescale clip_grad_norm_ would add: read + write g) become one, and under FSDP2 one
        collective carries both. Bytes per element (fp32): 8 (12 with L2) on the GPU backends,
        4 (8) on the cpu backend, which carries sum(v) between steps. Then folds the clip
        coefficient into the scaling of the update pass."""
        grad_scale = self.scaling()["grad_scale"]
        parts = []
        for b, states, steps, v_sums in work:
            h = b.hyper
            lists = [b.tensors, b.grads, b.column("exp_avg_sq"), steps]
            sums = b.impl.adai_clip_sums(
                *lists, beta2=h["beta2"], weight_decay=h["weight_decay"], decoupled=h["decoupled"],
                norm_type=norm_type, grad_scale=grad_scale, v_sums=v_sums, storage=b.storage,
                prepared=self._prepared(b, "adai_clip_sums", lists),
            )
            parts.append((b.shard_group, sums, element_count(b.params, b.tensors)))
        totals, count = global_clip_sums(parts, norm_type)
        norm = totals[0] if math.isinf(norm_type) else totals[0].pow(1.0 / norm_type)
        # the dtype clip_grad_norm_'s norm has (torch._foreach_norm's: fp32 unless grads are fp64)
        fp64 = any(b.tensors and b.grads[0].dtype == torch.float64 for b, *_ in work)
        norm = norm.to(torch.float64 if fp64 else torch.float32)
        self._this_step["scaling"] = self._clipped_scaling(norm, [b for b, *_ in work])
        max_norm = clip_settings(self.param_groups, type(self).__name__)[0]
        c = torch.clamp(max_norm / (norm.to(torch.float64) + NORM_EPS), max=1.0)
        vhat_sum = totals[1] + c * totals[2] + c * c * totals[3]
        return vhat_sum / count if not (isinstance(count, int) and count == 0) else vhat_sum

    def _carried_sums(self, batch, states):
        """The carried sums of a batch whose backend keeps them, with a new one holding NaN
        ("not known") where a param has none or its exp_avg_sq changed since (_v_sum_of); None
        for the other backends, and for FSDP2's sharded params (a shard's sum would be saved as
        a replicated value by torch.distributed.checkpoint and could be loaded onto another
        sharding; a ZeRO partition is a plain tensor whose state each rank saves itself, and
        keeps its sum). Checked here, before any kernel runs: the native update stores 8 bytes
        at each one."""
        if batch.backend not in _KEEPS_V_SUM or (batch.shard_group is not None
                                                  and is_distributed_tensor(batch.params[0])):
            return None
        planned = self._planned_sums(batch)
        if planned is not None:
            return planned
        # (a compiled step keeps no record: dynamo traces no id() of a dict, and it guards on
        # what it traced anyway; there a sum is trusted as a .data edit would leave it)
        compiling = torch.compiler.is_compiling()
        sums = []
        for state in states:
            total = state.get(V_SUM)
            if total is not None and not (torch.is_tensor(total) and total.dtype is torch.float64
                                          and total.dim() == 0 and total.is_cpu):
                raise ValueError(f"Adai: state {V_SUM!r} must be a 0-dim float64 CPU tensor, the sum of exp_avg_sq "
                                 f"(got {total!r}); delete it to have it read from exp_avg_sq")
            stale = not compiling and self._v_sum_of.get(id(state)) != _identity(state["exp_avg_sq"])
            if total is None or stale:
                total = torch.full((), math.nan, dtype=torch.float64)
            sums.append(total)
        return sums

    def _planned_sums(self, batch):
        """A step plan's carried sums (a column of it, checked with the others), when every
        exp_avg_sq is as this optimizer's last update left it: the versions recorded then
        (_keep_sums) are their versions now. Else None: the sums are checked one by one."""
        plan = batch.plan
        if plan is None or V_SUM not in plan.columns or plan.extra.get(V_SUM) is None:
            return None
        if list(map(_VERSION, plan.columns["exp_avg_sq"])) != plan.extra[V_SUM]:
            return None
        return plan.columns[V_SUM]

    def _planned_state_keys(self, batch):
        """The carried sums are read and written by address: a plan checks them too."""
        keys = super()._planned_state_keys(batch)
        if all(V_SUM in state for state in batch.states):
            keys.append(V_SUM)
        return keys

    def _keep_sums(self, keys, states, v_sums, batch=None) -> None:
        """Right after a batch's update: the sums it wrote are state; a backend that keeps none
        has changed exp_avg_sq without them, so any are dropped. Only a param's own state is
        recorded in _v_sum_of: the stand-in of a staged param (base._stage) lives for one
        step, its exp_avg_sq is a copy, and its sum is read again next step. A step plan's
        batch whose sums are its own column records the versions of its exp_avg_sq instead."""
        plan = batch.plan if batch is not None else None
        if (plan is not None and V_SUM in plan.columns and v_sums is not None
                and all(map(operator.is_, v_sums, plan.columns[V_SUM]))):
            plan.extra[V_SUM] = list(map(_VERSION, plan.columns["exp_avg_sq"]))
            return
        if plan is not None:
            plan.extra.pop(V_SUM, None)
        if v_sums is None:
            for state in states:
                state.pop(V_SUM, None)
        else:
            for key, state, total in zip(keys, states, v_sums):
                state[V_SUM] = total
                if not torch.compiler.is_compiling() and self.state.get(key) is state:
                    self._v_sum_of[id(state)] = _identity(state["exp_avg_sq"])


_VERSION = operator.attrgetter("_version")


def _identity(v: torch.Tensor) -> tuple:
    return id(v), v.data_ptr(), v._version


def _loaded_sum(value, param_id) -> torch.Tensor:
    """A saved carried sum as state: a copy, 0-dim float64 on the CPU."""
    if not (torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point()):
        raise ValueError(f"the state dict's {V_SUM!r} of param {param_id!r} must be a one-element floating-point "
                         f"tensor, got {value!r}")
    return value.detach().to(device="cpu", dtype=torch.float64).reshape(()).clone()


class AdaiW(Adai):
    """Adai with decoupled weight decay (decoupled=True by default)."""

    def __init__(self, params, lr, betas=(0.1, 0.99), eps=1e-3, weight_decay=0.0, decoupled=True,
                 **options: Unpack[FusedOptions]):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled, **options)
