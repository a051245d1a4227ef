"""The "triton" backend: the operations of fused_optim.operations as Triton kernels, one launch
per call over the whole tensor list (per pass for Adai; pass 1 adds a one-program fixed-order
sum).

The single-pass operations (`<stem>_step`: Adam, AdaMomentum, DualAdam, Lion, ...) need no
code here: one implementation launches each from its declaration, by the kernel convention of
triton_kernels/moment_walk.py (kernel `<stem>_kernel` in triton_kernels/<stem>.py). Adai's
three operations have their own glue below.

Beyond the contract: step counters on the params' device are read by the kernel (capturable:
no host sync); on the CPU next to CUDA params they are read on the host and copied over in one
transfer. DualAdam's global_step, grad_scale and found_inf are read by the kernel.

CPU tensors are served only when the kernels run under the Triton interpreter
(TRITON_INTERPRET=1 set before triton_kernels is imported), which is how CI without a GPU
runs this backend.
"""
import importlib
import importlib.util
from typing import List, Optional, Tuple

import torch

from . import _param_storage
from ._param_storage import ParamStorage
from ._staging import Prepared, Staged
from .operations import OPERATIONS, Operation, implements

try:  # reads a step plan's host counters in one call (_counts)
    from . import _cpu
except ImportError:
    _cpu = None

_IMPORT_ERROR: Optional[BaseException] = None
try:
    from .triton_kernels import adai as _adai
    from .triton_kernels import adai_clip as _adai_clip
    from .triton_kernels import multi_tensor as _mt
except ImportError as error:  # triton missing or too old (TritonTooOld): available() says so
    _IMPORT_ERROR = error


def _unavailable_because() -> str:
    # by name: the class is defined in the very package whose import it aborted
    if type(_IMPORT_ERROR).__name__ == "TritonTooOld":
        return str(_IMPORT_ERROR)
    return f"triton is not importable: {_IMPORT_ERROR}"


def available() -> Tuple[bool, str]:
    """(usable here, why not)."""
    if _IMPORT_ERROR is not None:
        return False, _unavailable_because()
    if torch.cuda.is_available():
        return True, ""
    if _mt.INTERPRETED:
        return True, ""
    return False, ("the triton backend needs a CUDA device (or TRITON_INTERPRET=1 set before it is imported, "
                   "to run on the CPU)")


def _device_of(params: List[torch.Tensor]) -> torch.device:
    if _IMPORT_ERROR is not None:
        raise RuntimeError(f"the triton backend is unavailable: {_unavailable_because()}")
    device = params[0].device
    if device.type == "cpu" and not _mt.INTERPRETED:
        raise RuntimeError(
            "the triton backend needs CUDA tensors; got CPU tensors (set TRITON_INTERPRET=1 before "
            "importing fused_optim.triton_backend to run its kernels on the CPU, slowly)"
        )
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"the triton backend needs CUDA tensors; got {device.type} tensors")
    return device


def _host_steps(steps: List[torch.Tensor], device: torch.device) -> bool:
    """Whether the step counters are read on the host (counters elsewhere than the params,
    e.g. CPU counters next to CUDA params) rather than by the kernel."""
    return steps[0].device != device


def _plan(kind: str, staged: Staged, steps: Optional[List[torch.Tensor]], device: torch.device,
          tags: Optional[List[int]] = None, prepared: Optional[Prepared] = None):
    """The launch plan of a call's lists (staged, or the address lists a step plan prepared)."""
    host = steps is not None and _host_steps(steps, device)
    if prepared is not None:  # (the table has no column for a list the call leaves out)
        addresses = [column for column in prepared.addresses if column]
        numels, step_addresses = prepared.numels, prepared.step_addresses
    else:
        addresses, numels = staged.addresses, staged.numels
        step_addresses = None if steps is None else [s.data_ptr() for s in steps]
    plan = _mt.PLANS.get(kind, addresses, numels, None if host else step_addresses, host, device, tags)
    if host and prepared is not None:
        plan.fill_counts(_counts(prepared))
    elif host:
        plan.fill_steps(steps)
    return plan


def _counts(prepared: Prepared):
    """The counts of a step plan's host counters: in one native call where the cpu module is
    built (item() per counter costs ~0.5 us), else one stack."""
    if _cpu is not None:
        return _cpu.read_counters(prepared.step_addresses)
    return torch.stack(prepared.steps).float()


def _dtypes(params: List[torch.Tensor], grads: List[torch.Tensor], *states: List[torch.Tensor]) -> dict:
    """The kernel's dtype constexprs: P for params and grads, S for the states. The table
    holds bare addresses, so a tensor of another dtype would be misread: checked here (on the
    first tensor of each list; a call serves one dtype combination)."""
    states = [s for s in states if s]
    param_dtype, state_dtype = params[0].dtype, states[0][0].dtype
    if param_dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"the triton backend serves fp32, fp64, bf16 and fp16 params, not {param_dtype}")
    if grads[0].dtype != param_dtype:
        raise TypeError(f"grads must have the params' dtype {param_dtype}, got {grads[0].dtype}")
    allowed = (torch.float64,) if param_dtype == torch.float64 else (torch.float32, torch.bfloat16)
    for state in states:
        if state[0].dtype != state_dtype or state_dtype not in allowed:
            raise TypeError(f"states of {param_dtype} params must share one dtype of {allowed}, got "
                            f"{[s[0].dtype for s in states]}")
    return {"P": _mt.tl_dtype(param_dtype), "S": _mt.tl_dtype(state_dtype), "MATH": _mt.math_dtype(param_dtype)}


def _staged(roles, writable, storage: Optional[ParamStorage], prepared: Optional[Prepared] = None):
    """(staged lists, tags, storage constexprs) of a call: its roles, then the masters/remainders
    of MASTER/REMAINDER storage (written when the call writes the params); for STOCHASTIC each
    tensor's base key as a table tag (param_storage.py). EXTRA: that column's index. With a
    step plan's prepared lists nothing is staged (None)."""
    if prepared is not None:
        extras = storage.extras if storage is not None and storage.mode in _param_storage.EXTRA_DTYPES else None
    else:
        extras = _param_storage.checked_extras("fused_optim.triton_backend", roles[0], storage)
    constexprs = {"STORAGE": _param_storage.PLAIN if storage is None else storage.mode, "EXTRA": len(roles)}
    tags = None
    if extras is not None:
        roles, writable = list(roles) + [extras], list(writable[:len(roles)]) + [writable[0]]
    elif storage is not None and storage.mode == _param_storage.STOCHASTIC:
        indices = list(storage.tensor_indices or [])
        if len(indices) != len(roles[0]):
            raise ValueError(f"fused_optim.triton_backend: {len(indices)} tensor indices for {len(roles[0])} params")
        tags = _param_storage.base_keys(storage.seed, indices)
    return (None if prepared is not None else Staged(roles, writable)), tags, constexprs


def _optional(t: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
    return t if t is not None else _mt.dummy(device)


def _scaling(grad_scale, found_inf, device):
    """Pointer args and flags of the GradScaler inputs."""
    return ([_optional(grad_scale, device), _optional(found_inf, device)],
            {"HAS_GRAD_SCALE": grad_scale is not None, "HAS_FOUND_INF": found_inf is not None})


# ---------------------------------------------------------------------------------------------
# The single-pass operations, from their declarations
# ---------------------------------------------------------------------------------------------

def _single_pass_kernel(name: str):
    """The kernel of operation `<stem>_step`: `<stem>_kernel` of triton_kernels/<stem>.py, or
    None (another kind of operation, or one this backend does not serve)."""
    if not name.endswith("_step"):
        return None
    stem = name[: -len("_step")]
    if importlib.util.find_spec(f"{__package__}.triton_kernels.{stem}") is None:
        return None
    return getattr(importlib.import_module(f"{__package__}.triton_kernels.{stem}"), f"{stem}_kernel")


def _single_pass(declaration: Operation, kernel):
    """The implementation of a single-pass operation: one launch of its kernel over the call's
    table (params, grads, the states the call has, [storage column], [steps], numel) with the
    GradScaler pointers, the float hyperparameters as fp64 runtime arguments in declaration
    order and the bool ones as constexprs. An optional state list (max_exp_avg_sqs without
    amsgrad) is passed empty and gets no column."""
    name = declaration.name
    state_names = declaration.state_lists()
    writes = [n in declaration.mutated for n in ("params", "grads") + state_names]
    schema = torch._C.parse_schema(f"triton::{name}{declaration.signature}")
    flags_declared = {a.name for a in schema.arguments if str(a.type) == "bool"}

    def run(*lists, storage: Optional[ParamStorage] = None, grad_scale=None, found_inf=None, global_step=None,
            prepared: Optional[Prepared] = None, **hyper):
        arguments = dict(zip(declaration.lists, lists))
        params, grads = list(arguments["params"]), list(arguments["grads"])
        if not params:
            return
        device = _device_of(params)
        roles, writable = [params, grads], writes[:2]
        for state_name, write in zip(state_names, writes[2:]):
            state = list(arguments[state_name])
            if not state:
                continue
            if len(roles) != 2 + state_names.index(state_name):  # the columns after a gap would shift
                raise ValueError(f"{name}: {state_name} given without the states declared before it")
            if len(state) != len(params):
                raise ValueError(f"{name}: {len(state)} {state_name} for {len(params)} params")
            roles.append(state)
            writable.append(write)
        dtypes = _dtypes(params, grads, *roles[2:])
        staged, tags, constexprs = _staged(roles, writable, storage, prepared)
        steps = list(arguments["steps"]) if "steps" in arguments else None
        plan = _plan(name, staged, steps, device, tags, prepared)
        args: list = [plan.table, plan.blocks]
        if "global_step" in declaration.scalars:
            if not torch.is_tensor(global_step):
                global_step = torch.tensor(float(global_step), dtype=torch.float64)
            # a CPU counter next to CUDA params travels in one small copy; the kernel reads it
            args.append(_mt.to_device_async(global_step, device))
        pointers, flags = _scaling(grad_scale, found_inf, device)
        args += pointers
        for h in declaration.hyperparameters:
            if h in flags_declared:
                constexprs[h.upper()] = bool(hyper[h])
            else:
                args.append(float(hyper[h]))
        _mt.launch_plan(kernel, plan, args, dict(constexprs, **dtypes, **flags))
        if staged is not None:
            staged.finish()

    run.__name__ = name
    return run


if _IMPORT_ERROR is None:
    for _name, _declaration in OPERATIONS.items():
        _found = _single_pass_kernel(_name)
        if _found is not None:
            implements("triton", _name)(_single_pass(_declaration, _found))


# ---------------------------------------------------------------------------------------------
# Adai: pass 1 (sum of vhat, v not written) and pass 2 (the update, v included)
# ---------------------------------------------------------------------------------------------

_SUM_BLOCK = 1024


def _weight_decay_flags(weight_decay: float, decoupled: bool) -> dict:
    # decided on the host as the native math does (neither when wd == 0): exact mirrors of
    # the reference's `if weight_decay != 0` branches
    return {"APPLY_DECAY": decoupled and weight_decay != 0, "APPLY_L2": (not decoupled) and weight_decay != 0}


# v_sums (Adai's carried sums of exp_avg_sq, operations.py) are not kept by this backend: its
# pass 1 reads v itself, and Adai drops the sums after its update.


@implements("triton", "adai_second_moment")
def adai_second_moment(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, grad_scale=None,
                       found_inf=None, v_sums=None, storage: Optional[ParamStorage] = None,
                       prepared: Optional[Prepared] = None) -> torch.Tensor:
    """Sum over every element of every tensor of vhat_new = (beta2 v + (1-beta2) g_eff^2) /
    (1 - beta2^t), a 0-dim fp64 tensor on the params' device. Does NOT write v: adai_update
    recomputes v_new and stores it, so the pair equals the reference pair (and found_inf
    needs no check here: adai_update skips)."""
    if not params:
        return torch.zeros((), dtype=torch.float64)
    device = _device_of(params)
    # pass 1 only reads: stage without write-back
    staged, tags, constexprs = _staged([list(params), list(grads), list(exp_avg_sqs)], [False, False, False],
                                       storage, prepared)
    plan = _plan("adai_second_moment", staged, list(steps), device, tags, prepared)
    if plan.grid[0] == 0:
        return torch.zeros((), dtype=torch.float64, device=device)
    total = torch.empty((), dtype=torch.float64, device=device)  # the sum kernel writes it
    if plan.partials is None:
        plan.partials = torch.empty(plan.grid[0], dtype=torch.float64, device=device)
    flags = _weight_decay_flags(weight_decay, decoupled)
    _mt.launch_plan(
        _adai.adai_second_moment_kernel, plan,
        [plan.table, plan.blocks, plan.partials, _optional(grad_scale, device), float(beta2), 1.0 - beta2,
         float(weight_decay)],
        dict(constexprs, **_dtypes(params, grads, exp_avg_sqs), APPLY_L2=flags["APPLY_L2"],
             HAS_GRAD_SCALE=grad_scale is not None),
    )
    _mt.launch(_adai.sum_partials_kernel, (1,), [plan.partials, plan.grid[0], total], {"RBLOCK": _SUM_BLOCK})
    return total


@implements("triton", "adai_clip_sums")
def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, norm_type,
                   grad_scale=None, v_sums=None, storage: Optional[ParamStorage] = None,
                   prepared: Optional[Prepared] = None) -> torch.Tensor:
    """Adai's pass 1 with max_grad_norm (reference: adai_clip_sums): [norm part, c0, c1, c2],
    a float64 tensor of 4 on the device, from one read of g and v (and p with L2); writes
    nothing. Deterministic (fixed-order sums, no atomics)."""
    device = _device_of(params)
    kind = _adai_clip.norm_kind(norm_type)
    staged, tags, constexprs = _staged([list(params), list(grads), list(exp_avg_sqs)], [False, False, False],
                                       storage, prepared)
    plan = _plan("adai_clip_sums", staged, list(steps), device, tags, prepared)
    out = torch.zeros(4, dtype=torch.float64, device=device)
    if plan.grid[0] == 0:  # only empty tensors: nothing to add (a min over no element is +inf)
        if kind == _adai_clip.NORM_MIN.value:
            out[0] = float("inf")
        return out
    partials = torch.empty(4 * plan.grid[0], dtype=torch.float64, device=device)
    l2 = float(weight_decay) if weight_decay != 0 and not decoupled else 0.0
    _mt.launch_plan(
        _adai_clip.adai_clip_sums_kernel, plan,
        [plan.table, plan.blocks, partials, _optional(grad_scale, device), float(beta2), l2, float(norm_type)],
        dict(constexprs, **_dtypes(params, grads, exp_avg_sqs), NORM=kind, APPLY_L2=l2 != 0.0,
             HAS_GRAD_SCALE=grad_scale is not None),
    )
    _mt.launch(_adai_clip.clip_totals_kernel, (4,), [partials, plan.grid[0], out], {"NORM": kind,
                                                                                  "RBLOCK": _SUM_BLOCK})
    return out


def _beta1_prod_dtype(params: List[torch.Tensor], beta1_prods: List[torch.Tensor]):
    """beta1_prod may differ from the moments: bf16 moments with an fp32 beta1_prod (see
    adai_update_kernel for why a bf16 one is a poor choice)."""
    dtype = beta1_prods[0].dtype
    allowed = (torch.float64,) if params[0].dtype == torch.float64 else (torch.float32, torch.bfloat16)
    if dtype not in allowed:
        raise TypeError(f"beta1_prod of {params[0].dtype} params must be one of {allowed}, got {dtype}")
    return _mt.tl_dtype(dtype)


@implements("triton", "adai_update")
def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, lr, beta0, beta2, eps, weight_decay,
                decoupled, vbar, grad_scale=None, found_inf=None, v_sums=None,
                storage: Optional[ParamStorage] = None, prepared: Optional[Prepared] = None) -> None:
    if not params:
        return
    device = _device_of(params)
    staged, tags, constexprs = _staged(
        [list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(beta1_prods)],
        [True, False, True, True, True], storage, prepared)
    plan = _plan("adai_update", staged, list(steps), device, tags, prepared)
    vbar = _mt.to_device_async(vbar, device)
    pointers, flags = _scaling(grad_scale, found_inf, device)
    _mt.launch_plan(
        _adai.adai_update_kernel, plan,
        [plan.table, plan.blocks, vbar, *pointers, float(lr), float(beta0), float(beta2), 1.0 - beta2,
         1.0 - eps, float(weight_decay), 1.0 - lr * weight_decay],
        dict(constexprs, **_dtypes(params, grads, exp_avgs, exp_avg_sqs), B=_beta1_prod_dtype(params, beta1_prods),
             **flags, **_weight_decay_flags(weight_decay, decoupled)),
    )
    if staged is not None:
        staged.finish()
