"""The "cuda" backend: the native module fused_optim._cuda behind the contract
(fused_optim.operations). The module is torch-independent: it gets raw addresses, dtype codes
and a stream handle, and checks everything it can before it launches anything.

Each operation hands a group's whole tensor lists to ONE native call per pass, which launches
one kernel over all tensors (several when the list outgrows a launch's argument table). So
that a step runs without a host sync and can be captured in a CUDA graph, the kernels read on
the device what lives there:
- steps: CPU counters are read on the host, counters on the params' device by the kernels
  (capturable); DualAdam's global_step likewise (a 0-dim float64 tensor, or a number).
- grad_scale (g is divided by it) and found_inf (nonzero: the step changes nothing): 0-dim
  float32 tensors on the params' device, read by the kernels.
- Adai's pass 1 returns the sum of the new vhat as a 0-dim float64 tensor on the device, and
  its update pass reads vbar (0-dim float64, on the device) there.
States are float32 (float64 for float64 params) or, for non-float64 params, bfloat16: the
kernels load them to fp32 and store them rounded to nearest even.

Every declared operation the module has an entry point for is served by one generic function
(_single_pass), which reads what it needs from the declaration; Adai's passes have their own.
The device type served is the module's (fused_optim._cuda.device_type): "cuda", or "cpu" for
the build of tests/test_cuda_backend.py that runs the kernels as host code.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ._param_storage import ParamStorage, checked_extras, native_indices
from ._staging import Prepared, Staged
from .dtypes import NATIVE_CODES
from .operations import OPERATIONS, Operation, implementations, implements

try:
    from . import _cuda
except ImportError as _err:  # built without nvcc, or a broken build: available() says why
    _cuda = None
    _IMPORT_ERROR: Optional[ImportError] = _err
else:
    _IMPORT_ERROR = None

BACKEND = "cuda"
Tensor = torch.Tensor


def available() -> Tuple[bool, str]:
    """(available, reason): the module imported and torch sees a CUDA device."""
    if _cuda is None:
        return False, (f"the native module fused_optim._cuda did not import ({_IMPORT_ERROR}); "
                       "reinstall with nvcc available (FUSED_OPTIM_CUDA=1 makes a missing nvcc an error)")
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible to torch"
    return True, f"native module fused_optim._cuda (archs {', '.join(_cuda.compiled_archs())})"


def _module():
    if _cuda is None:
        raise RuntimeError(available()[1])
    return _cuda


def _where(name: str) -> str:
    return f"fused_optim.cuda_backend.{name}"


def _check(name: str, roles: Sequence[Sequence[Tensor]], names: Sequence[str], device_type: str):
    """(device, param dtype code, state dtype code) after checking what the native side cannot
    see: one device of the module's type, params and grads of one dtype, the states (roles 2
    on) of one dtype, one shape per param. Raises ValueError before anything is modified."""
    where = _where(name)
    params = roles[0]
    device, dtype = params[0].device, params[0].dtype
    if device.type != device_type:
        raise ValueError(f"{where}: params must be CUDA tensors, got {device}")
    if dtype not in NATIVE_CODES:
        raise ValueError(f"{where}: unsupported param dtype {dtype}")
    state_dtype = roles[2][0].dtype if len(roles) > 2 else dtype
    if state_dtype not in NATIVE_CODES:
        raise ValueError(f"{where}: unsupported state dtype {state_dtype}")
    for k, (role, role_name) in enumerate(zip(roles, names)):
        if len(role) != len(params):
            raise ValueError(f"{where}: {len(role)} {role_name} for {len(params)} params")
        want = dtype if k < 2 else state_dtype
        for p, t in zip(params, role):
            if t.device != device:
                raise ValueError(f"{where}: {role_name} on {t.device}, params on {device}")
            if t.dtype != want:
                raise ValueError(f"{where}: {role_name} of dtype {t.dtype}, expected {want}")
            if t.shape != p.shape:
                raise ValueError(f"{where}: a {role_name} tensor has shape {tuple(t.shape)}, its param "
                                 f"{tuple(p.shape)}")
    return device, NATIVE_CODES[dtype], NATIVE_CODES[state_dtype]


def _steps(name: str, steps: Sequence[Tensor], count: int, device: torch.device, device_type: str) -> Dict[str, Any]:
    """The Call fields of the per-param step counters: host values, or device addresses."""
    where = _where(name)
    if len(steps) != count:
        raise ValueError(f"{where}: {len(steps)} steps for {count} params")
    if not steps:
        return {}
    on_device = steps[0].device.type == device_type
    for s in steps:
        if s.dim() != 0 or s.dtype != torch.float32 or (s.device.type == device_type) != on_device:
            raise ValueError(f"{where}: steps must be 0-dim float32 tensors, all on the CPU or all on the params' "
                             "device")
        if on_device and s.device != device:
            raise ValueError(f"{where}: a step is on {s.device}, params on {device}")
    if on_device:
        return dict(step_addresses=[s.data_ptr() for s in steps])
    return dict(steps=[float(s) for s in steps])


def _codes(roles: Sequence[Sequence[Tensor]]):
    """(device, param dtype code, state dtype code) of lists checked before (_check)."""
    params = roles[0]
    return params[0].device, NATIVE_CODES[params[0].dtype], NATIVE_CODES[(roles[2] if len(roles) > 2 else params)[0].dtype]


def _prepared_steps(module, prepared: Prepared, device_type: str) -> Dict[str, Any]:
    """The Call fields of a step plan's counters: their device addresses (the kernels read
    them), or the counts of host counters read in one native call."""
    if prepared.steps and prepared.steps[0].device.type == device_type:
        return dict(step_addresses=prepared.step_addresses)
    return dict(steps=module.read_counters(prepared.step_addresses))


def _global_step(name: str, global_step, device: torch.device, device_type: str) -> Dict[str, Any]:
    """The Call fields of DualAdam's global counter (a 0-dim float64 tensor, or a number)."""
    if not torch.is_tensor(global_step):
        return dict(global_step=float(global_step))
    if global_step.dim() != 0 or global_step.dtype != torch.float64:
        raise ValueError(f"{_where(name)}: global_step must be a 0-dim float64 tensor")
    if global_step.device.type == device_type:
        if global_step.device != device:
            raise ValueError(f"{_where(name)}: global_step on {global_step.device}, params on {device}")
        return dict(global_step_address=global_step.data_ptr())
    return dict(global_step=float(global_step))


def _scalar(name: str, what: str, t: Optional[Tensor], dtype: torch.dtype, device: torch.device) -> int:
    """Device address of an optional 0-dim scalar the kernels read (0 when absent)."""
    if t is None:
        return 0
    if t.dim() != 0 or t.dtype != dtype or t.device != device:
        raise ValueError(f"{_where(name)}: {what} must be a 0-dim {dtype} tensor on {device}, got "
                         f"{tuple(t.shape)} {t.dtype} on {t.device}")
    return t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _staged(name: str, roles, writable, storage: Optional[ParamStorage]) -> Staged:
    """The call's address lists: its roles, then the masters/remainders of the storage modes
    that keep them (written when the call writes the params)."""
    extras = checked_extras(_where(name), roles[0], storage)
    if extras is not None:
        roles, writable = list(roles) + [extras], list(writable) + [writable[0]]
    return Staged(roles, writable)


def _storage_fields(storage: Optional[ParamStorage]) -> Dict[str, Any]:
    if storage is None:
        return {}
    return dict(storage_mode=int(storage.mode), seed=int(storage.seed) & 0xFFFFFFFF,
                tensor_indices=native_indices(storage))


def _lists(name: str, roles, writable, storage: Optional[ParamStorage], prepared: Optional[Prepared]):
    """(staged lists or None, address lists, numels) of a call: a step plan's prepared lists,
    or the roles staged (_staged)."""
    if prepared is not None:
        return None, prepared.addresses, prepared.numels
    staged = _staged(name, roles, writable, storage)
    return staged, staged.addresses, staged.numels


def _checked(name: str, module, roles, names, steps, prepared: Optional[Prepared]):
    """(device, dtype codes, the fields of the per-param steps: none where steps is None) of a
    call: from a step plan's prepared lists, checked when the plan was made, or checked here."""
    device_type = module.device_type
    if prepared is not None:
        device, dtype, state_dtype = _codes(roles)
        fields = {} if steps is None else _prepared_steps(module, prepared, device_type)
    else:
        device, dtype, state_dtype = _check(name, roles, names, device_type)
        fields = {} if steps is None else _steps(name, steps, len(roles[0]), device, device_type)
    return device, dtype, state_dtype, fields


def _call(module, addresses, numels, device: torch.device, dtype: int, state_dtype: int,
          storage: Optional[ParamStorage], **fields: Any):
    """The native Call of one pass: lists, dtypes, device and stream, param storage."""
    return module.Call(lists=addresses, numels=numels, dtype=dtype, state_dtype=state_dtype,
                       device=device.index or 0, stream=_stream(device), **_storage_fields(storage), **fields)


def _amp(name: str, grad_scale, found_inf, device: torch.device) -> Dict[str, int]:
    return dict(grad_scale=_scalar(name, "grad_scale", grad_scale, torch.float32, device),
                found_inf=_scalar(name, "found_inf", found_inf, torch.float32, device))


# ---- the single-pass operations, from their declarations ----------------------------------------

def _single_pass(operation: Operation):
    """One launch (per table) of a declared operation: every per-param list but the steps, in
    the declaration's order, each staged and written back when the declaration says the call
    writes it (a list the call leaves empty, max_exp_avg_sqs without amsgrad, keeps its place
    as an empty address list); steps per param or the global step; the hyperparameters by name
    (the native entry point checks them against its own)."""
    name = operation.name
    roles = [n for n in operation.lists if n != "steps"]
    per_param_steps = "steps" in operation.lists

    def run(*lists: List[Tensor], grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
            global_step=None, storage: Optional[ParamStorage] = None, prepared: Optional[Prepared] = None,
            **hyper: Any) -> None:
        module = _module()
        named = dict(zip(operation.lists, lists))
        params = named["params"]
        if not params:
            return
        present = [n for n in roles if len(named[n]) or n in ("params", "grads")]
        tensors = [list(named[n]) for n in present]
        device, dtype, state_dtype, steps = _checked(name, module, tensors, present,
                                                     named["steps"] if per_param_steps else None, prepared)
        if not per_param_steps:
            steps = _global_step(name, global_step, device, module.device_type)
        amp = _amp(name, grad_scale, found_inf, device)
        staged, addresses, numels = _lists(name, tensors, [n in operation.mutated for n in present], storage,
                                           prepared)
        if staged is not None:  # (a list the call leaves out keeps its place, empty)
            given = iter(addresses)
            addresses = [next(given) if n in present else [] for n in roles] + list(given)
        call = _call(module, addresses, numels, device, dtype, state_dtype, storage, **steps, **amp)
        module.step(name, call, hyper)
        if staged is not None:
            staged.finish()

    run.__name__ = name
    run.__doc__ = operation.doc
    return run


# ---- Adai ---------------------------------------------------------------------------------------
# v_sums (Adai's carried sums of exp_avg_sq, operations.py) are not kept by this backend: its
# pass 1 reads v itself, and Adai drops the sums after its update.

def _adai_pass1(name: str, params, grads, exp_avg_sqs, steps, grad_scale, storage, hyper, results: int,
                prepared: Optional[Prepared] = None) -> Tensor:
    """Adai's pass 1 in either form: reads g, v (and p with L2) and writes nothing but its
    result, `results` float64 values on the device (pass 2 updates v, so found_inf needs no
    check here: pass 2 skips). Deterministic: fixed reduction trees, no atomics."""
    module = _module()
    roles = [list(params), list(grads), list(exp_avg_sqs)]
    device, dtype, state_dtype, steps = _checked(name, module, roles, ["params", "grads", "exp_avg_sqs"], steps,
                                                 prepared)
    scale = _scalar(name, "grad_scale", grad_scale, torch.float32, device)
    _, addresses, numels = _lists(name, roles, [False, False, False], storage, prepared)
    chunks = module.chunk_count(numels)
    partials = torch.empty(max(results * chunks, 1), dtype=torch.float64, device=device)
    out = torch.empty(results if results > 1 else (), dtype=torch.float64, device=device)
    call = _call(module, addresses, numels, device, dtype, state_dtype, storage, grad_scale=scale,
                 partials=partials.data_ptr(), partials_len=partials.numel(), out=out.data_ptr(), **steps)
    module.step(name, call, hyper)
    return out


@implements(BACKEND, "adai_second_moment")
def adai_second_moment(params, grads, exp_avg_sqs, steps, *, grad_scale=None, found_inf=None, v_sums=None,
                       storage=None, prepared=None, **hyper) -> Tensor:
    """Adai pass 1: the group's sum of the new vhat, a 0-dim float64 tensor on the device."""
    if not params:
        _module()
        return torch.zeros((), dtype=torch.float64)
    return _adai_pass1("adai_second_moment", params, grads, exp_avg_sqs, steps, grad_scale, storage, hyper, 1,
                       prepared)


@implements(BACKEND, "adai_clip_sums")
def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, grad_scale=None, v_sums=None, storage=None,
                   prepared=None, **hyper) -> Tensor:
    """Adai pass 1 with max_grad_norm (reference: adai_clip_sums): [norm part, c0, c1, c2], a
    float64 tensor of 4 on the device, from one read of g and v (and p with L2)."""
    if not params:
        _module()
        out = torch.zeros(4, dtype=torch.float64)
        out[0] = math.inf if hyper.get("norm_type") == -math.inf else 0.0
        return out
    return _adai_pass1("adai_clip_sums", params, grads, exp_avg_sqs, steps, grad_scale, storage, hyper, 4,
                       prepared)


@implements(BACKEND, "adai_update")
def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, vbar: Tensor, grad_scale=None,
                found_inf=None, v_sums=None, storage=None, prepared=None, **hyper) -> None:
    """Adai pass 2, given vbar (0-dim float64 on the device): v, beta1_prod, m and p."""
    module = _module()
    if not params:
        return
    name = "adai_update"
    roles = [list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(beta1_prods)]
    device, dtype, state_dtype, steps = _checked(
        name, module, roles, ["params", "grads", "exp_avgs", "exp_avg_sqs", "beta1_prods"], steps, prepared)
    vbar_address = _scalar(name, "vbar", vbar, torch.float64, device)
    amp = _amp(name, grad_scale, found_inf, device)
    staged, addresses, numels = _lists(name, roles, [True, False, True, True, True], storage, prepared)
    call = _call(module, addresses, numels, device, dtype, state_dtype, storage, vbar_address=vbar_address, **steps,
                 **amp)
    module.step(name, call, hyper)
    if staged is not None:
        staged.finish()


# every other declared operation with a native entry point: the generic pass (a new
# optimizer's operation needs no line here). Without the module, its operations are the
# declared ones, each raising available()'s reason when called.
for _name, _operation in OPERATIONS.items():
    if (_cuda is None or _name in _cuda.operations()) and _name not in implementations(BACKEND):
        implements(BACKEND, _name)(_single_pass(_operation))
