"""FusedOptimizer: what every optimizer class shares. Validation, param groups, lazily
created state, state_dict import/export, backend choice and the split of each step into
batches (one per group and param dtype) that the backends process in one call each.
No update math lives here: subclasses hand their batches to a backend's step functions.
"""
import contextlib
import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from typing_extensions import Unpack

from .. import backends, operations
from .._compat import eager_under_compile_before_2_6
from .._grad_scaling import skipped
from .._staging import shares_one_dense_layout
from .. import dtypes
from ..dtypes import state_dtype_for
from . import _mixed_precision as mixed
from . import _validation as check
from ._clipping import clip_settings, clipped_scale, total_norm
from ._options import FusedOptions, spell_out_signature
from ._options import resolve as resolve_options
from ._overlap import check_params as check_no_shared_memory
from ._sharding import local, partition_group, partitions_registered, shard_group, zero_caller
from . import _step_lane, _step_plan
from ._uninterrupted import HeldInterrupts


def _native_advance():
    """fused_optim._cpu's counter update where the native module exists, else None."""
    if backends.availability("cpu")[0]:
        return backends.implementation("cpu").advance_steps
    return None


_IMMUTABLE = (int, float, bool, str, type(None), torch.dtype)


def _immutable(value) -> bool:
    """Whether a group entry cannot change without being replaced (_group_hyper)."""
    return type(value) in _IMMUTABLE or (type(value) is tuple and all(type(v) in _IMMUTABLE for v in value))


@contextlib.contextmanager
def _torch_load_hooks_off(optimizer):
    """torch's load_state_dict without its hooks: ours runs them, in torch's order."""
    names = ("_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks")
    saved = {name: optimizer.__dict__[name] for name in names if name in optimizer.__dict__}
    for name in saved:
        optimizer.__dict__[name] = type(saved[name])()
    try:
        yield
    finally:
        optimizer.__dict__.update(saved)


@dataclass
class Batch:
    """Params of one group and one dtype that have a grad this step, and who updates them."""

    group: Dict[str, Any]
    hyper: Dict[str, Any]  # the group's validated hyperparameters
    backend: str
    # the backend's operations (fused_optim.operations.BackendOperations)
    impl: Any
    # what the kernels update: the params, the local shards of DTensor params, or fp32 masters
    # (_mixed_precision.ParamStorageStep)
    tensors: List[torch.Tensor]
    grads: List[torch.Tensor]
    params: List[torch.Tensor]  # the params themselves, the keys of their state
    shard_group: Any = None  # process group the params are sharded over (None: not sharded)
    # how a fusing backend keeps the bf16/fp16 params (_param_storage.ParamStorage; None:
    # plain, or kept by _mixed_precision.ParamStorageStep around the call)
    storage: Any = None
    # the params' states, all made by step() before the first kernel runs
    states: Optional[List[Dict[str, Any]]] = None
    # set once the batch's update and its step counters are both written (_batch_done)
    done: bool = False
    # positions of params whose param or grad is not contiguous (_collect): what _stage checks
    strided: List[int] = field(default_factory=list)
    # (tensor, its contiguous copy the kernels update): written back by _batch_done
    staged: List[tuple] = field(default_factory=list)
    # (the param's state, the stand-in dict the step sees, holding the staged copies)
    staged_states: List[tuple] = field(default_factory=list)
    # the batch's part of its group's step plan (_step_plan.BatchPlan) when the plan held this
    # step, with this step's grad addresses; None: the batch was collected the full way
    plan: Any = None
    grad_addresses: Optional[List[int]] = None

    def column(self, key: str) -> List[torch.Tensor]:
        """One state of every param, as the kernels see it (local shards)."""
        if self.plan is not None and key in self.plan.columns:
            return self.plan.columns[key]
        return [local(state[key]) for state in self.states]


class FusedOptimizer(torch.optim.Optimizer):
    # Per-param tensor states created at a param's first step: name -> initial value (0 or 1).
    # amsgrad (Adam, AdaMomentum) adds max_exp_avg_sq, see state_layout().
    state_initial_values: Dict[str, float] = {}
    # Keys other implementations use for our states (authors' code), renamed on load.
    state_aliases: Dict[str, str] = {}
    # Whether each param keeps its own step counter (all but DualAdam).
    per_param_step = True
    # States that keep the math dtype whatever state_dtype says (Adai's beta1_prod: see adai.py).
    math_dtype_states: tuple = ()
    # Whether the update takes the total grad norm of max_grad_norm in a pass of its own
    # (Adai: its reduction pass) instead of the separate norm pass of _scaling_for.
    fuses_grad_norm = False
    # hyperparameters that schedulers must not cycle as a momentum (see __init__)
    hidden_from_schedulers: tuple = ()

    # the operation of fused_optim.operations one step runs per batch, for optimizers whose step
    # is one pass (_update); Adai, whose step is two, runs its own
    operation: Optional[str] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            spell_out_signature(cls.__init__)

    def __init__(self, params, defaults: Dict[str, Any], **options: Unpack[FusedOptions]):
        options = resolve_options(type(self).__name__, options)
        backend, state_dtype, capturable = options["backend"], options["state_dtype"], options["capturable"]
        self._backend_request = backends.requested_backend(backend)
        backends.trace_choice_as_constant()
        # the dtype of the tensor states of fp32/bf16/fp16 params (None: fp32); per group
        state_dtype_for(torch.float32, state_dtype)
        # capturable: step counters live on the params' device and nothing in step() reads a
        # device value on the host, so a CUDA graph can capture the step (cuda/triton backends)
        check.flag("capturable", capturable)
        # the options live in the groups (master_weights and the other param storage options per
        # group, like lr; max_grad_norm there too, so a schedule can change it, but the same in
        # all of them): every one but the backend, which the optimizer keeps
        defaults = {**defaults, **{key: value for key, value in options.items() if key != "backend"}}
        clip_settings([defaults], type(self).__name__)
        mixed.check_group(defaults, type(self).__name__)
        # kept out of `defaults`, filled into each group by add_param_group: torch's OneCycleLR
        # and CyclicLR (cycle_momentum=True) rewrite betas[0] of any optimizer whose defaults
        # have "betas"; for Adai that is beta0, not a momentum, so they must refuse instead
        self._hidden_defaults = {key: defaults.pop(key) for key in self.hidden_from_schedulers if key in defaults}
        # the total grad norm of the last step with max_grad_norm, for logging (last_grad_norm):
        # fp64, NaN before the first such step, written in place. One 1-element tensor shared by
        # every param group: torch.compile carries in-place writes to such a tensor out of a
        # compiled step; to an optimizer attribute, or to a 0-dim tensor once the optimizer has
        # state, it did not (only the first compiled call wrote it)
        defaults["last_grad_norm"] = torch.full((1,), math.nan, dtype=torch.float64)
        self._init_transient()
        super().__init__(params, defaults)
        # on the params' device: writing it never waits for the device (CUDA graphs too)
        self._share_grad_norm(self.defaults["last_grad_norm"].to(self._device() or "cpu"))

    # attributes beyond torch.optim's defaults/state/param_groups that a copy must carry
    # (torch's __getstate__ keeps only those three); subclasses add theirs
    _pickled_attributes = ("_backend_request", "_hidden_defaults")

    def _init_transient(self) -> None:
        # what one step works out for its backend calls (the scaling): a dict, as dynamo (before
        # torch 2.6) traces no attribute assignment on an optimizer inside a compiled step
        self._this_step: Dict[str, Any] = {}
        # id(state dict) -> what _check_state last accepted for it
        self._checked_states: Dict[int, tuple] = {}
        # group index -> its step plan (_step_plan.GroupPlan), made after a step collected it
        # the full way and checked at each step before it is used
        self._plans: Dict[int, Any] = {}
        # group index -> (its values, its keys, hyper() of them) (_group_hyper)
        self._hypers: Dict[int, tuple] = {}
        # the whole step's lane while the plans hold (_step_lane.py)
        self._lane: Optional[_step_lane.StepLane] = None

    def __getstate__(self) -> Dict[str, Any]:
        saved = super().__getstate__()
        saved.update({name: getattr(self, name) for name in self._pickled_attributes})
        return saved

    def __setstate__(self, saved: Dict[str, Any]) -> None:
        super().__setstate__(saved)
        self._init_transient()

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether GradScaler.step() hands this step its scale and inf flag (`grad_scale`,
        `found_inf` attributes) instead of unscaling the grads in memory and skipping step()
        on an inf. True where the step clips (max_grad_norm: clipping the scaled grads needs
        the scale), is captured in a CUDA graph (capturable: GradScaler's skip reads the flag
        on the host) or was asked to behave as torch's fused optimizers (fused=True). Else
        False, as for torch.optim's default optimizers: then the grads are unscaled in memory,
        so clipping them outside the step (Lightning's gradient_clip_val, accelerate's and
        HF Trainer's clip_grad_norm_) sees true grads, and Lightning allows it."""
        return bool(self.defaults.get("fused") or self.defaults.get("max_grad_norm") is not None
                    or any(group.get("capturable") or group.get("max_grad_norm") is not None
                           for group in self.param_groups))

    @property
    def last_grad_norm(self) -> torch.Tensor:
        """The total grad norm of the last step with max_grad_norm (0-dim fp64, on the params'
        device, NaN before the first such step)."""
        return self.param_groups[0]["last_grad_norm"].view(())

    def _share_grad_norm(self, norm: torch.Tensor) -> None:
        self.defaults["last_grad_norm"] = norm
        for group in self.param_groups:
            group["last_grad_norm"] = norm

    @property
    def backend(self) -> str:
        """The backend asked for ("auto" resolves per group at each step)."""
        return self._backend_request

    # Subclasses define:
    #   hyper(group, index) -> dict: the group's hyperparameters as plain numbers and flags,
    #       validated (ValueError naming the value and the group): the keyword hyperparameters
    #       of their operation;
    #   operation (one pass per step), or _update(batches) (Adai's two passes).

    def _update(self, batches: List["Batch"]) -> None:
        """One pass: the operation over each batch, then its counters."""
        for b in batches:
            states = self._states(b)
            self._run(b, states)
            self._commit_steps(b, states)

    def _run(self, batch: "Batch", states: List[Dict[str, Any]], **keywords: Any) -> Any:
        """The batch's call of the operation: the per-param lists its declaration names, from
        the params, grads and states (a state this group's layout leaves out, as
        max_exp_avg_sq without amsgrad, is an empty list), the group's hyperparameters, the
        step's scaling and the param storage."""
        declaration = operations.OPERATIONS[self.operation]
        layout = self.state_layout(batch.hyper)
        lists = []
        for name in declaration.lists:
            if name == "params":
                lists.append(batch.tensors)
            elif name == "grads":
                lists.append(batch.grads)
            else:
                key = operations.state_key(name)
                lists.append(batch.column(key) if key == "step" or key in layout else [])
        return getattr(batch.impl, self.operation)(*lists, **batch.hyper, **self.scaling(), **keywords,
                                                   storage=batch.storage,
                                                   prepared=self._prepared(batch, self.operation, lists))

    @staticmethod
    def _prepared(batch: "Batch", operation: str, lists: List[List[torch.Tensor]]):
        """The prepared address lists of a planned batch's call (None for the others: the
        backend then takes them from the lists)."""
        if batch.plan is None:
            return None
        return batch.plan.prepared_call(operations.OPERATIONS[operation], lists, batch.grad_addresses)

    def state_layout(self, hyper: Dict[str, Any]) -> Dict[str, float]:
        """The tensor states a param of a group with these hyperparameters needs."""
        if hyper.get("amsgrad"):
            return {**self.state_initial_values, "max_exp_avg_sq": 0.0}
        return self.state_initial_values

    # ----- param groups ----------------------------------------------------------------------
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        for key, value in self._hidden_defaults.items():
            param_group.setdefault(key, value)
        super().add_param_group(param_group)
        self._plans.clear()
        group = self.param_groups[-1]
        try:
            index = len(self.param_groups) - 1
            self.hyper(group, index)
            check.flag("capturable", group.get("capturable", False), index)
            mixed.check_group(group, type(self).__name__, index)
            self._check_params(group["params"], group.get("state_dtype"), group.get("capturable", False))
            check_no_shared_memory([g["params"] for g in self.param_groups], type(self).__name__)
        except Exception:
            self.param_groups.pop()
            raise

    def _device(self) -> Optional[torch.device]:
        for group in self.param_groups:
            for p in group["params"]:
                return p.device
        return None

    def _check_params(self, params: List[torch.Tensor], state_dtype=None, capturable=False) -> None:
        device = self._device()
        for p in params:
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters (got {p.dtype})")
            if p.dtype not in dtypes.SUPPORTED:
                raise ValueError(
                    f"{type(self).__name__} supports parameter dtypes "
                    f"{[str(d) for d in dtypes.SUPPORTED]}, got {p.dtype}"
                )
            if p.device != device:
                raise ValueError(
                    f"all parameters of one {type(self).__name__} must be on one device; got {device} and {p.device}"
                )
            state_dtype_for(p.dtype, state_dtype)
        if params:
            # an explicit backend that cannot serve raises here; the lookups the step makes are
            # prepared now, in eager mode (torch.compile traces the step as dictionary reads)
            backend = backends.choose(self._backend_request, device, state_dtype, capturable)
            backends.implementation(backend)

    # ----- step ------------------------------------------------------------------------------
    @eager_under_compile_before_2_6
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One optimization step, in two phases. First everything that can fail on the input
        or allocate: checks, the grad norm, every state of every batch, masters: an error
        there leaves params and state exactly as they were. Then the writes: each batch's
        update and its step counters are one unit (_batch_done), and a Ctrl-C is delivered
        after the last unit; an error inside a unit (a device fault) leaves every param
        either stepped with its counter or untouched, and raises."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._lane is not None and not torch.compiler.is_compiling() and self._lane.step(self):
            return loss
        batches = self._collect()
        self._this_step["scaling"] = self._scaling_for(batches)
        fresh = [key for b in batches if b.plan is None for key in b.params if not self.state.get(key)]
        masters = mixed.ParamStorageStep(self, batches)
        self._this_step["masters"] = masters
        updated = False
        try:
            for b in batches:
                b.states = self._states(b)
                self._stage(b)
            if torch.compiler.is_compiling():
                self._update(batches)
            else:
                with HeldInterrupts():
                    self._update(batches)
                    updated = True
        except BaseException:
            if not updated:  # (a Ctrl-C held back until the end comes after a whole step)
                self._undo_unfinished(batches, fresh, masters)
            raise
        if updated:
            self._make_plans(batches)
            self._lane = _step_lane.make(self, batches) if all(b.plan is not None for b in batches) else None
        return loss

    # ----- step plans (_step_plan.py) ----------------------------------------------------------
    def _make_plans(self, batches: List[Batch]) -> None:
        """After a whole step: a plan for each group this step collected the full way, where
        every batch of it can be planned (a group edited between here and its next step is
        caught by the plan's checks)."""
        for index, (group, offset, signature, has_grad, positions) in self._this_step.pop("unplanned", {}).items():
            mine = [b for b in batches if b.group is group]
            if not mine:
                continue
            keys = self._planned_state_keys(mine[0])
            if not all(_step_plan.plannable(b, keys) for b in mine):
                continue
            parts = [_step_plan.BatchPlan(b, where, keys) for b, where in zip(mine, positions)]
            self._plans[index] = _step_plan.GroupPlan(group, offset, signature, has_grad, parts)

    def _planned_state_keys(self, batch: Batch) -> List[str]:
        """The states whose columns a plan keeps: those the batch's calls read (its layout, the
        masters or remainders of its storage) and the step counters."""
        keys = list(self.state_layout(batch.hyper))
        keys += [key for key in mixed.STATE_DTYPES if key in batch.states[0]]
        return keys + ["step"] if self.per_param_step else keys

    def _undo_unfinished(self, batches: List[Batch], fresh: List[torch.Tensor], masters) -> None:
        """After an error: the states this step made or converted for batches it did not
        finish are removed or restored; finished batches keep theirs."""
        finished = {id(key) for b in batches if b.done for key in b.params}
        masters.undo(keep=finished)
        for key in fresh:
            if id(key) not in finished:
                self.state.pop(key, None)
        if any(b.done for b in batches):
            self._partial_step_done()

    def _partial_step_done(self) -> None:
        """Called when a step raised after some batches were finished. DualAdam advances its
        global step there (the unfinished params then skip this step, as params without a grad)."""

    def _batch_done(self, batch: Batch) -> None:
        """The batch's update is written: staged copies go back to their tensors, bf16 params
        are rounded from their masters, and it counts as stepped."""
        for original, copy_ in batch.staged:
            original.copy_(copy_)
        copies = {id(c) for _, c in batch.staged}
        for state, stand_in in batch.staged_states:
            # what the step set or removed besides the staged tensors
            for key in [key for key in state if key not in stand_in]:
                del state[key]
            state.update({key: value for key, value in stand_in.items() if id(value) not in copies})
        self._this_step["masters"].finish_batch(self, batch)
        batch.done = True

    def _stage(self, batch: Batch) -> None:
        """The native kernels walk each param's tensors by raw address and need one dense
        layout for all of them (_staging.py); where a param has none (a strided view), the
        backends would copy inside the update, where an out-of-memory error could come after
        another batch was written. So the copies are made here, before the first kernel; the
        kernels update them and _batch_done writes them back."""
        if batch.backend == "torch" or torch.compiler.is_compiling():
            return
        # (states are made with their param's layout, so with contiguous params and grads there
        # is nothing to stage; a state tensor given another layout by hand is still staged, by
        # the backend, inside the update)
        for i in batch.strided:
            p, g, state = batch.tensors[i], batch.grads[i], batch.states[i]
            tensors = {key: local(value) for key, value in state.items()
                       if key in self._elementwise_states and torch.is_tensor(value)}
            if shares_one_dense_layout([p, g, *tensors.values()]):
                continue
            batch.tensors[i] = p.contiguous()
            batch.grads[i] = g.contiguous()
            batch.staged.append((p, batch.tensors[i]))
            stand_in = dict(state)
            for key, value in tensors.items():
                stand_in[key] = value.contiguous()
                batch.staged.append((value, stand_in[key]))
            batch.states[i] = stand_in
            batch.staged_states.append((state, stand_in))

    def _scaling_for(self, batches: List[Batch]) -> Dict[str, Optional[torch.Tensor]]:
        """GradScaler's scale and inf flag for this step, with the clip coefficient folded into
        the scale when max_grad_norm is set (the norm is kept as last_grad_norm). Optimizers
        that take the norm in a pass of their own (fuses_grad_norm) get the plain scaling and
        call _clipped_scaling themselves."""
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        max_norm, norm_type, _ = clip_settings(self.param_groups, type(self).__name__)
        if max_norm is None or self.fuses_grad_norm:
            return {"grad_scale": grad_scale, "found_inf": found_inf}
        self._check_zero_partition_for_the_norm()
        device = next((b.grads[0].device for b in batches if b.grads), torch.device("cpu"))
        # batches of one shard group (or of replicated params) share one norm part
        by_group: Dict[Any, List[torch.Tensor]] = {}
        for b in batches:
            by_group.setdefault(b.shard_group, []).extend(b.grads)
        norm = total_norm(list(by_group.items()), norm_type, device)
        if grad_scale is not None:
            norm = norm / grad_scale.to(norm.device)
        return self._clipped_scaling(norm, batches)

    def _check_zero_partition_for_the_norm(self) -> None:
        """Inside a ZeRO wrapper the params are this rank's partition, and a norm of them alone
        would clip each rank by its own part: refused unless the partition was registered
        (fused_optim.zero.attach), which makes the norm an all-reduce over its group."""
        if torch.compiler.is_compiling() or partition_group(self) is not None:
            return
        wrapper = zero_caller()
        if wrapper is not None:
            raise RuntimeError(
                f"{type(self).__name__} clips (max_grad_norm) inside {wrapper} on this rank's partition of the "
                "params, but the norm must cover every param: call fused_optim.zero.attach(<the engine or "
                "ZeroRedundancyOptimizer>) once after creating it")

    def _clipped_scaling(self, norm: torch.Tensor, batches: List[Batch]) -> Dict[str, Optional[torch.Tensor]]:
        """The scaling with the clip coefficient of this total norm (of the unscaled grads)
        folded into GradScaler's scale; keeps the norm as last_grad_norm."""
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        max_norm, norm_type, error_if_nonfinite = clip_settings(self.param_groups, type(self).__name__)
        if error_if_nonfinite and not bool(torch.isfinite(norm)):  # a host read, as in torch
            raise RuntimeError(f"{type(self).__name__}: the total norm of order {norm_type} of the gradients is "
                               "non-finite, so it cannot be clipped (error_if_nonfinite=True)")
        self.param_groups[0]["last_grad_norm"].copy_(norm.reshape(1))
        on_gpu_kernels = any(b.backend in ("cuda", "triton") for b in batches)
        dtype = torch.float32 if on_gpu_kernels else norm.dtype
        return {"grad_scale": clipped_scale(norm, max_norm, grad_scale, dtype), "found_inf": found_inf}

    def _collect(self) -> List[Batch]:
        """This step's batches: per group, those of its step plan where the plan still holds,
        else collected the full way (every check; the group is planned after the step)."""
        batches: List[Batch] = []
        device = None
        name = type(self).__name__
        planning = operations.plain_eager() and not partitions_registered()
        unplanned = self._this_step["unplanned"] = {}
        offset = 0
        for index, group in enumerate(self.param_groups):
            hyper = self._group_hyper(group, index)
            mixed.check_group(group, name, index)
            planned = None
            if planning:
                signature = _step_plan.signature(self, group, hyper)
                planned = self._planned_batches(index, group, hyper, offset, signature)
            if planned is not None:
                where = planned[0].tensors[0].device if planned else None
                if device is not None and where is not None and where != device:
                    raise ValueError(f"all parameters of one {name} must be on one device; got {device} and {where}")
                device = device or where
                batches += planned
            else:
                mine, device, has_grad, positions = self._collect_group(group, hyper, device)
                batches += mine
                if planning:
                    unplanned[index] = (group, offset, signature, has_grad, positions)
            offset += len(group["params"])
        return batches

    def _group_hyper(self, group: Dict[str, Any], index: int) -> Dict[str, Any]:
        """hyper(group, index), validated again only when an entry of the group changed: the
        same keys holding the very same objects, all immutable (numbers, flags, strings,
        dtypes, tuples of them), give the same hyperparameters. A group holding a tensor (an lr
        tensor written in place; tensor betas) or a list or dict is validated at every step,
        and so is every compiled step (torch.compile guards on what it traced instead)."""
        if torch.compiler.is_compiling():
            return self.hyper(group, index)
        values = list(group.values())
        cached = self._hypers.get(index)
        if (cached is not None and len(values) == len(cached[0]) and all(map(operator.is_, values, cached[0]))
                and tuple(group) == cached[1]):
            return dict(cached[2])
        hyper = self.hyper(group, index)
        if all(_immutable(value) for key, value in group.items() if key not in ("params", "last_grad_norm")):
            self._hypers[index] = (values, tuple(group), dict(hyper))
        else:
            self._hypers.pop(index, None)
        return hyper

    def _planned_batches(self, index: int, group: Dict[str, Any], hyper: Dict[str, Any], offset: int,
                         signature: tuple) -> Optional[List[Batch]]:
        """The group's batches from its step plan, or None where it has none or it no longer holds."""
        plan = self._plans.get(index)
        if plan is None or not plan.matches(group, offset, signature):
            return None
        parts = plan.batch_parts(self.state.get)
        if parts is None:
            return None
        batches = []
        for part, params, grads, grad_addresses in parts:
            batch = Batch(group, hyper, part.backend, part.impl, list(part.tensors), list(grads), list(params))
            batch.states, batch.storage = list(part.states), part.storage
            batch.plan, batch.grad_addresses = part, grad_addresses
            batches.append(batch)
        return batches

    def _collect_group(self, group: Dict[str, Any], hyper: Dict[str, Any], device):
        """A group's batches the full way: (batches, the device, which params have a grad, each
        batch's positions among the group's params or None for all of them)."""
        name = type(self).__name__
        supported = dtypes.SUPPORTED
        by_kind: Dict[Any, List[List[Any]]] = {}
        state_dtype = group.get("state_dtype")
        has_grad = []
        # per param and step, so the checks are ordered to cost little: supported dtypes are
        # real, so the dtype checks also rule out complex params and grads
        for position, p in enumerate(group["params"]):
            g = p.grad
            has_grad.append(g is not None)
            if g is None:
                continue
            if g.layout is not torch.strided:
                raise RuntimeError(f"{name} does not support sparse gradients")
            dtype = p.dtype
            if dtype not in supported:
                raise ValueError(f"{name} does not support "
                                 + ("complex parameters" if p.is_complex() else f"parameter dtype {dtype}"))
            if g.dtype != dtype:
                raise ValueError(f"{name}: a gradient of dtype {g.dtype} for a parameter of dtype {dtype}")
            if g.shape != p.shape:
                raise ValueError(f"{name}: a gradient of shape {tuple(g.shape)} for a parameter of shape {tuple(p.shape)}")
            where = p.device
            if g.device != where:
                raise ValueError(f"{name}: a gradient on {g.device} for a parameter on {where}")
            if device is None:
                device = where
            elif where != device:
                raise ValueError(f"all parameters of one {name} must be on one device; got {device} and {where}")
            state = self.state.get(p)
            if state:
                self._check_state(p, state, state_dtype)
            lists = by_kind.setdefault((p.dtype, shard_group(p)), [[], [], [], [], []])
            lists[0].append(local(p))
            lists[1].append(local(g))
            if not (lists[0][-1].is_contiguous() and lists[1][-1].is_contiguous()):
                lists[3].append(len(lists[2]))  # maybe to be staged (_stage)
            lists[2].append(p)
            lists[4].append(position)
        batches, positions = [], []
        if by_kind:
            backend = backends.choose(self._backend_request, device, group.get("state_dtype"),
                                      group.get("capturable", False))
            impl = backends.implementation(backend)
            everyone = len(group["params"])
            for (_, group_of_shards), (tensors, grads, params, strided, where) in by_kind.items():
                batch = Batch(group, hyper, backend, impl, tensors, grads, params, group_of_shards)
                batch.strided = strided
                batches.append(batch)
                positions.append(None if len(where) == everyone else where)
        return batches, device, has_grad, positions

    # ----- state -----------------------------------------------------------------------------
    def _check_state(self, p: torch.Tensor, state: Dict[str, Any], state_dtype=None) -> None:
        """Existing state must fit its param: the kernels trust shapes and dtypes (a param
        converted with .double() or .to(device) after its state was made would otherwise be
        updated from memory of the wrong size). A state checked before is checked again only
        when the param or any state tensor is not the one checked (a cheap signature)."""
        # (eager only: torch.compile guards on what it traces and runs none of this later)
        compiling = torch.compiler.is_compiling()
        if not compiling:
            signature = (p.dtype, p.shape, p.device, state_dtype, tuple(map(id, state.values())))
            if self._checked_states.get(id(state)) == signature:
                return
        where = p.get_device()
        for key, value in state.items():
            if key not in self._elementwise_states or not torch.is_tensor(value):
                continue
            want = self._state_dtype(p, key, state_dtype)
            if value.shape != p.shape or value.dtype != want or value.get_device() != where:
                raise ValueError(
                    f"{type(self).__name__}: state {key!r} ({value.dtype}, {tuple(value.shape)}, {value.device}) "
                    f"does not fit its parameter ({p.dtype} -> states {want}, {tuple(p.shape)}, {p.device}); "
                    "was the parameter converted or moved after the optimizer made its state? Move the model "
                    "before creating the optimizer, or load a state dict"
                )
        if not compiling:
            self._checked_states[id(state)] = signature

    @property
    def _elementwise_states(self) -> set:
        """The states the kernels read element by element, each of its param's shape; other
        entries (the step, Adai's carried sum: one number per param) have shapes of their own."""
        return {*self.state_initial_values, "max_exp_avg_sq", *mixed.STATE_DTYPES}

    def _state_dtype(self, p: torch.Tensor, key: str, state_dtype) -> torch.dtype:
        if key in mixed.STATE_DTYPES:
            return mixed.STATE_DTYPES[key]
        return state_dtype_for(p.dtype, None if key in self.math_dtype_states else state_dtype)

    def step_number(self, state: Dict[str, Any]) -> torch.Tensor:
        """The number of the step being taken for a param (1 at its first), as a tensor on
        the counter's device (no host read): the per-param count, or DualAdam's global one."""
        if self.per_param_step:
            count = state.get("step")
            return count + 1 if count is not None else torch.ones((), dtype=torch.float32)
        return self._global_step + 1

    def _states(self, batch: Batch) -> List[Dict[str, Any]]:
        """The state of each param of a batch, creating what is missing (after validation);
        step() makes them for every batch before the first update."""
        if batch.states is not None:
            return batch.states
        layout = self.state_layout(batch.hyper)
        state_dtype = batch.group.get("state_dtype")
        capturable = batch.group.get("capturable", False)
        cpu = torch.device("cpu")
        states = []
        for p in batch.params:
            state = self.state[p]
            if self.per_param_step:
                step = state.get("step")
                # a float32 scalar, as torch.optim keeps it: on the CPU (what the native counter
                # update expects), on the param's device when capturable; anything else a user
                # or another library put there is converted
                where = p.device if capturable else cpu
                if not (torch.is_tensor(step) and step.dtype is torch.float32 and step.device == where
                        and step.dim() == 0):
                    state["step"] = (torch.zeros((), dtype=torch.float32, device=where) if step is None
                                     else torch.as_tensor(step, dtype=torch.float32).to(where).reshape(()))
            for key, initial in layout.items():
                if key not in state:
                    state[key] = torch.full_like(
                        p, initial, dtype=self._state_dtype(p, key, state_dtype), memory_format=torch.preserve_format
                    )
            states.append(state)
        return states

    def scaling(self) -> Dict[str, Optional[torch.Tensor]]:
        """What the backends divide the grads by this step (GradScaler's scale, with the clip
        coefficient folded in) and whether GradScaler found an inf/NaN (then the step changes
        nothing, counters included)."""
        return self._this_step["scaling"]

    def _advance(self, counters: List[torch.Tensor], impl: Any = None, addresses: Optional[List[int]] = None) -> None:
        """Adds 1 to step counters after every call of the step succeeded (0 when found_inf).
        addresses: the counters' (a step plan's), where the native update may take them."""
        found_inf = getattr(self, "found_inf", None)
        # CPU counters (all but capturable steps) go through the native module whatever the
        # backend: 84 counters of a GPU model took 0.16 ms per step with torch._foreach_add_
        # (unless GradScaler's found_inf lives on a GPU: reading it would wait for the device)
        # (float32 counters only: DualAdam's global step is float64)
        if (not torch.compiler.is_compiling() and counters[0].is_cpu and counters[0].dtype is torch.float32
                and (found_inf is None or found_inf.is_cpu)):
            advance = getattr(impl, "advance_steps", None) or _native_advance()
            if advance is not None:
                if not skipped(found_inf):
                    advance(counters, addresses)
                return
        # traceable form: no host read of found_inf
        torch._foreach_add_(counters, 1.0)
        if found_inf is not None:
            torch._foreach_add_(counters, found_inf.to(counters[0].device), alpha=-1)

    def _commit_steps(self, batch: Batch, states: List[Dict[str, Any]]) -> None:
        """Right after the batch's update: its counters advance, and the batch is done."""
        addresses = batch.plan.column_addresses["step"] if batch.plan is not None else None
        self._advance(batch.column("step"), batch.impl, addresses)
        self._batch_done(batch)

    # ----- state_dict ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """torch.optim's state dict, without the logged grad norm the param groups carry (a
        tensor there would make saved param groups incomparable; it is not training state)."""
        saved = super().state_dict()
        for group in saved["param_groups"]:
            group.pop("last_grad_norm", None)
        return saved

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Loads our own state dicts and those of torch.optim / the authors' code (keys renamed,
        int steps accepted). Tensors are copied (no aliasing of the given dict) and keep the
        state dtype our kernels use (torch would cast them to the param dtype). In torch's
        order: the load_state_dict pre-hooks first (they may repair the dict), then the whole
        dict is checked before anything is replaced, then the post-hooks."""
        state_dict = state_dict.copy()
        for hook in getattr(self, "_optimizer_load_state_dict_pre_hooks", {}).values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        with _torch_load_hooks_off(self):
            self._load_state_dict(state_dict)
        for hook in getattr(self, "_optimizer_load_state_dict_post_hooks", {}).values():
            hook(self)

    def _load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """load_state_dict without the hooks (subclasses extend this)."""
        imported = self._import_state_dict(state_dict)
        self._checked_states.clear()
        self._plans.clear()
        super().load_state_dict(imported)
        self._restore_state(imported)

    def _import_state_dict(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        if "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("a state dict needs 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved_groups)} param groups, this optimizer {len(self.param_groups)}"
            )
        imported_state = {}
        for param_id, saved in state_dict["state"].items():
            imported_state[param_id] = {
                self.state_aliases.get(key, key): (value.detach().clone() if torch.is_tensor(value) else value)
                for key, value in saved.items()
            }
        for index, (saved_group, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved_group["params"]) != len(group["params"]):
                raise ValueError(f"param group {index} has a different number of params in the state dict")
            for param_id, p in zip(saved_group["params"], group["params"]):
                self._check_saved_state(imported_state.get(param_id, {}), p, f"param {param_id!r} of group {index}")
        imported = dict(state_dict)
        imported["state"] = imported_state
        imported["param_groups"] = copy.deepcopy(saved_groups)
        # hyperparameters the other implementation does not have (the authors' AdaMomentum has
        # no amsgrad, say) keep this optimizer's current values
        for saved_group, group in zip(imported["param_groups"], self.param_groups):
            for key, value in group.items():
                if key != "params":
                    saved_group.setdefault(key, value)
            # how bf16/fp16 params are kept is this optimizer's choice, not the checkpoint's: a
            # checkpoint saved without masters builds them from the params at the next step
            for key in mixed.OPTIONS:
                saved_group[key] = group.get(key, False)
            # the logged norm stays this optimizer's tensor (state_dict leaves it out)
            saved_group["last_grad_norm"] = group["last_grad_norm"]
        return imported

    def _check_saved_state(self, saved: Dict[str, Any], p: torch.Tensor, where: str) -> None:
        """A loaded state must be one the step can use: a whole, finite, non-negative step
        count, and the tensor states as tensors of the param's shape (torch.optim would take
        any of these and fail at the next step, or step with NaN)."""
        tensor_states = self._elementwise_states
        for key, value in saved.items():
            if key == "step" and self.per_param_step:
                check.step_count(value, f"the state dict's step of {where}")
            elif key in tensor_states and not torch.is_tensor(value):
                raise ValueError(f"the state dict's {key!r} of {where} must be a tensor, got {type(value).__name__}")
            if torch.is_tensor(value) and key != "step" and value.shape != p.shape:
                raise ValueError(f"state {key!r} of shape {tuple(value.shape)} for a parameter of shape "
                                 f"{tuple(p.shape)} ({where})")
            if key in tensor_states and not (value.is_floating_point() or key in mixed.STATE_DTYPES):
                raise ValueError(f"the state dict's {key!r} of {where} must be a floating-point tensor, "
                                 f"got {value.dtype}")

    def _restore_state(self, imported: Dict[str, Any]) -> None:
        for saved_group, group in zip(imported["param_groups"], self.param_groups):
            for param_id, p in zip(saved_group["params"], group["params"]):
                saved = imported["state"].get(param_id)
                if not saved:
                    continue
                state = self.state[p]
                for key, value in saved.items():
                    if key == "step":
                        state[key] = torch.tensor(float(value), dtype=torch.float32)
                    elif torch.is_tensor(value) and (value.is_floating_point() or key in mixed.STATE_DTYPES):
                        # (torch's load_state_dict cast every state to the param's dtype, the
                        # int16 remainders too: restored from the saved values)
                        state[key] = value.to(device=p.device, dtype=self._state_dtype(p, key, group.get("state_dtype")))
