"""The "cpu" backend: the native module fused_optim._cpu behind the contract
(fused_optim.operations).

Each operation hands a group's whole tensor lists to ONE native call per pass, which iterates
over raw memory, so every tensor of one element index (param, grad, states) must share a dense
layout; where one does not (a strided view, say), that index goes through contiguous staging
copies that are written back after the call (_staging.Staged).

Every declared operation the module has an entry point for is served by one generic function
(_single_pass), which reads what it needs from the declaration: the lists and which of them the
call writes, per-param steps or DualAdam's global one, the hyperparameters. Adai's passes have
their own functions: they carry each tensor's sum of exp_avg_sq between steps (v_sums).
GradScaler: a found_inf step is skipped on the host (a CPU scalar: no sync), and the loops
divide each grad by grad_scale (a divided copy of the grads would cost a read and a write per
element, which is also what makes clipping inside the step cheaper than clip_grad_norm_).
"""
import math
from typing import Any, Dict, List, Optional

import torch

from . import _cpu
from ._grad_scaling import skipped
from ._param_storage import ParamStorage, checked_extras, native_indices
from ._staging import Prepared, Staged
from .dtypes import NATIVE_CODES
from .operations import OPERATIONS, Operation, implementations, implements

BACKEND = "cpu"


def _where(name: str) -> str:
    return f"fused_optim.cpu_backend.{name}"


def _dtype_code(name: str, tensors: List[torch.Tensor]) -> int:
    code = NATIVE_CODES.get(tensors[0].dtype)
    if code is None:
        raise ValueError(f"{_where(name)}: unsupported dtype {tensors[0].dtype}")
    return code


def _dtypes(name: str, roles: List[List[torch.Tensor]]) -> Dict[str, int]:
    """The Call's dtype codes: the params', and the states' (roles 2 on) when there are any,
    which the module checks against the math dtype it keeps states in."""
    codes = dict(dtype=_dtype_code(name, roles[0]))
    if len(roles) > 2:
        codes["state_dtype"] = _dtype_code(name, roles[2])
    return codes


def _step_counts(steps: List[torch.Tensor]) -> List[float]:
    """Each param's count before this step (the native loops use count + 1)."""
    return [s.item() for s in steps]


def _divisor(grad_scale: Optional[torch.Tensor]) -> float:
    """What the loops divide every grad by, in the math dtype: GradScaler's scale, with the
    clip coefficient folded in (FusedOptimizer._scaling_for); 1 without either."""
    return 1.0 if grad_scale is None else float(grad_scale)


def _staged(name: str, roles: List[List[torch.Tensor]], writable: List[bool],
            storage: Optional[ParamStorage]) -> Staged:
    """The call's address lists: its roles, then the masters/remainders of the storage modes
    that keep them (written when the params are). Those params are contiguous (the optimizer
    asks for it), so nothing is staged that would come back in another element order."""
    extras = checked_extras(_where(name), roles[0], storage)
    if extras is not None:
        roles, writable = roles + [extras], writable + [writable[0]]
    return Staged(roles, writable)


def _storage_fields(storage: Optional[ParamStorage]) -> Dict[str, Any]:
    """The Call fields of the param storage (none for plain params)."""
    if storage is None:
        return {}
    return dict(storage_mode=int(storage.mode), seed=int(storage.seed) & 0xFFFFFFFF,
                tensor_indices=native_indices(storage))


def _call(addresses, numels, dtypes: Dict[str, int], storage: Optional[ParamStorage], **fields: Any):
    """The native Call of one pass: the lists, the dtypes, the threads, the param storage."""
    return _cpu.Call(lists=addresses, numels=numels, num_threads=torch.get_num_threads(), **dtypes,
                     **_storage_fields(storage), **fields)


def advance_steps(steps: List[torch.Tensor], addresses: Optional[List[int]] = None) -> None:
    """Adds 1 to each 0-dim float32 CPU step tensor (FusedOptimizer._states makes them so) in
    one native call: torch's per-tensor ops (torch._foreach_add_ included) cost microseconds
    per CPU scalar, which adds up over hundreds of params. addresses: theirs, where a step
    plan has them."""
    _cpu.advance_counters([s.data_ptr() for s in steps] if addresses is None else addresses)


# ---- the single-pass operations, from their declarations ----------------------------------------

def _single_pass(operation: Operation):
    """One pass of a declared operation: every per-param list but the steps, in the
    declaration's order, each staged and written back when the declaration says the call
    writes it (a list the call leaves empty, max_exp_avg_sqs without amsgrad, keeps its place
    as an empty address list); steps per param or the global step; the hyperparameters by name
    (the native entry point checks them against its own)."""
    name = operation.name
    roles = [n for n in operation.lists if n != "steps"]
    per_param_steps = "steps" in operation.lists

    def run(*lists: List[torch.Tensor], grad_scale: Optional[torch.Tensor] = None,
            found_inf: Optional[torch.Tensor] = None, global_step: Optional[torch.Tensor] = None,
            storage: Optional[ParamStorage] = None, prepared: Optional[Prepared] = None, **hyper: Any) -> None:
        named = dict(zip(operation.lists, lists))
        if not named["params"] or skipped(found_inf):
            return
        if prepared is not None and name in prepared.kept:
            # a planned call after its first: the kept Call with this step's grads and counts
            _cpu.step_planned(name, prepared.kept[name], prepared.grads_role, prepared.addresses[prepared.grads_role],
                              prepared.step_addresses or [], 0.0 if per_param_steps else float(global_step),
                              torch.get_num_threads(), _divisor(grad_scale), hyper)
            return
        present = [n for n in roles if len(named[n]) or n in ("params", "grads")]
        tensors = [list(named[n]) for n in present]
        staged = None
        if prepared is not None:
            addresses, numels = prepared.addresses, prepared.numels
        else:
            staged = _staged(name, tensors, [n in operation.mutated for n in present], storage)
            given = iter(staged.addresses)
            addresses, numels = [next(given) if n in present else [] for n in roles] + list(given), staged.numels
        if not per_param_steps:
            steps = dict(global_step=float(global_step))
        elif prepared is not None:
            steps = dict(steps=_cpu.read_counters(prepared.step_addresses))
        else:
            steps = dict(steps=_step_counts(named["steps"]))
        call = _cpu.Call(lists=addresses, numels=numels, num_threads=torch.get_num_threads(),
                         **_dtypes(name, tensors), **_storage_fields(storage), grad_divisor=_divisor(grad_scale),
                         **steps)
        _cpu.step(name, call, hyper)
        if staged is not None:
            staged.finish()
        if prepared is not None:
            prepared.kept[name] = call

    run.__name__ = name
    run.__doc__ = operation.doc
    return run


# ---- Adai ---------------------------------------------------------------------------------------
# The native passes split the step differently from the reference (csrc/cpu/adai.cpp): pass 1
# reads only the grads and derives sum(v_new) from each tensor's sum(v) as our previous update
# pass left it; pass 2 updates v with everything else and sums the new v. The pair has the
# reference pair's effect; pass 1 alone does not write v. The sums are the optimizer's state
# (v_sums, operations.py): NaN where not known, then read from exp_avg_sq here.


def _v_sum_values(exp_avg_sqs: List[torch.Tensor], v_sums: Optional[List[torch.Tensor]],
                  prepared: Optional[Prepared] = None) -> List[float]:
    """sum(exp_avg_sq) of each tensor: its carried sum, or where that is not known (NaN, or
    no v_sums at all) a read of exp_avg_sq. With a step plan's lists (whose checks cover the
    sums: 0-dim float64 CPU tensors) the sums are read in one native call."""
    if v_sums is None:
        values = [math.nan] * len(exp_avg_sqs)
    elif prepared is not None:
        values = _cpu.read_sums([s.data_ptr() for s in v_sums])
    else:
        values = [s.item() for s in v_sums]
    missing = [i for i, total in enumerate(values) if math.isnan(total)]
    if missing:
        states = [exp_avg_sqs[i] for i in missing]
        staged = Staged([states], [False])
        computed = _cpu.tensor_sums(staged.addresses, staged.numels, _dtype_code("adai", states),
                                    num_threads=torch.get_num_threads())
        for i, total in zip(missing, computed):
            values[i] = total
    return values


def _steps_of(steps: List[torch.Tensor], prepared: Optional[Prepared]) -> List[float]:
    """Each param's count before this step: read by address where a step plan has them."""
    return _step_counts(steps) if prepared is None else _cpu.read_counters(prepared.step_addresses)


# the lists of pass 1's Call (then the masters or remainders of the param storage)
PASS1_ROLES = ("params", "grads")


def _adai_pass1(name: str, params, grads, exp_avg_sqs, steps, grad_scale, v_sums, storage, hyper,
                prepared: Optional[Prepared]) -> List[float]:
    # pass 1 writes nothing, so found_inf needs no check here (adai_update skips); it reads
    # params and grads (and the masters/remainders of the param storage), not exp_avg_sq
    if prepared is not None:
        addresses, numels = prepared.addresses_of(PASS1_ROLES), prepared.numels
    else:
        staged = _staged(name, [list(params), list(grads)], [False, False], storage)
        addresses, numels = staged.addresses, staged.numels
    call = _call(addresses, numels, _dtypes(name, [params, grads, exp_avg_sqs]), storage,
                 grad_divisor=_divisor(grad_scale), steps=_steps_of(steps, prepared),
                 v_sums=_v_sum_values(exp_avg_sqs, v_sums, prepared))
    result = _cpu.step(name, call, hyper)
    if prepared is not None:
        prepared.kept[name] = call  # for Adai's step lane (optimizers/_adai_lane.py)
    return result


@implements(BACKEND, "adai_second_moment")
def adai_second_moment(params, grads, exp_avg_sqs, steps, *, grad_scale=None, found_inf=None, v_sums=None,
                       storage=None, prepared=None, **hyper) -> torch.Tensor:
    if not params:
        return torch.zeros((), dtype=torch.float64)
    (total,) = _adai_pass1("adai_second_moment", params, grads, exp_avg_sqs, steps, grad_scale, v_sums, storage,
                           hyper, prepared)
    return torch.tensor(total, dtype=torch.float64)


@implements(BACKEND, "adai_clip_sums")
def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, grad_scale=None, v_sums=None, storage=None,
                   prepared=None, **hyper) -> torch.Tensor:
    if not params:
        return torch.tensor([math.inf if hyper.get("norm_type") == -math.inf else 0.0, 0.0, 0.0, 0.0],
                            dtype=torch.float64)
    sums = _adai_pass1("adai_clip_sums", params, grads, exp_avg_sqs, steps, grad_scale, v_sums, storage, hyper,
                       prepared)
    return torch.tensor(sums, dtype=torch.float64)


@implements(BACKEND, "adai_update")
def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, vbar, grad_scale=None,
                found_inf=None, v_sums=None, storage=None, prepared=None, **hyper) -> None:
    """Pass 2. With v_sums (0-dim float64 CPU tensors, the optimizer checked them), each one
    holds sum(exp_avg_sq) afterwards: the native loop stores the sums of the new v there, and
    a step skipped by found_inf fills in those not known from the unchanged v."""
    if not params:
        return
    if skipped(found_inf):
        if v_sums is not None:
            for total, value in zip(v_sums, _v_sum_values(exp_avg_sqs, v_sums)):
                total.fill_(value)
        return
    name = "adai_update"
    roles = [list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(beta1_prods)]
    staged = None
    if prepared is not None:
        addresses, numels = prepared.addresses, prepared.numels
    else:
        staged = _staged(name, roles, [True, False, True, True, True], storage)
        addresses, numels = staged.addresses, staged.numels
    call = _call(addresses, numels, _dtypes(name, roles), storage, grad_divisor=_divisor(grad_scale),
                 steps=_steps_of(steps, prepared), vbar=float(vbar),
                 v_sum_addresses=[] if v_sums is None else [s.data_ptr() for s in v_sums])
    _cpu.step(name, call, hyper)
    if staged is not None:
        staged.finish()
    if prepared is not None:
        prepared.kept[name] = call


def _native_operations() -> Dict[str, List[str]]:
    return _cpu.operations()


# every other declared operation with a native entry point: the generic pass (a new
# optimizer's operation needs no line here)
for _name, _operation in OPERATIONS.items():
    if _name in _native_operations() and _name not in implementations(BACKEND):
        implements(BACKEND, _name)(_single_pass(_operation))
