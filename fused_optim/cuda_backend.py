"""The "cuda" backend: the optimizers' step functions, computed by the native module
fused_optim._cuda (torch-independent: it gets raw addresses, dtype codes and a stream handle).

Each function hands the whole tensor list of a group to ONE native call per pass, which
launches one kernel over all tensors (several when the list outgrows a launch's argument
table). Differences from the reference's signatures, all so that a step can run without a
host sync and be captured in a CUDA graph:
- `steps` are the 0-dim float32 step tensors holding each param's count BEFORE this step (the
  kernels use t = step + 1 and never write them: the optimizer advances them afterwards).
  CPU tensors are read on the host; CUDA tensors are read by the kernels (capturable).
- DualAdam's `global_step` is the count before this step, a 0-dim float64 tensor (CPU or
  CUDA) or a number.
- Adai's pass 1 returns the sum of the new vhat as a 0-dim float64 tensor on the device, and
  pass 2 reads `vbar` (a 0-dim float64 CUDA tensor) from device memory.
- grad_scale (g is divided by it) and found_inf (nonzero: the step changes nothing) are
  optional 0-dim float32 CUDA tensors, read by the kernels (GradScaler without a sync).
States are float32 (float64 for float64 params) or, for non-float64 params, bfloat16: the
kernels load them to fp32 and store them rounded to nearest even.

Every native call is a torch.library custom op (fused_optim::cuda_*) with a fake kernel, so
torch.compile sees one opaque op per call.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch

from . import _dispatch, _param_modes
from ._param_modes import Mixed

from ._staging import Staged

try:
    from . import _cuda
except ImportError as _err:  # built without nvcc, or a broken build: available() says why
    _cuda = None
    _IMPORT_ERROR: Optional[ImportError] = _err
else:
    _IMPORT_ERROR = None

Tensor = torch.Tensor

# The device the tensors live on. tests/test_cuda_backend.py sets "cpu" to run this module on
# host memory against fused_optim._cuda's kernels compiled as host code (tests/cuda_emulation).
_DEVICE_TYPE = "cuda"

# The codes of csrc/include/fused_optim/dtypes.h.
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def available() -> Tuple[bool, str]:
    """(available, reason): the module imported and torch sees a CUDA device."""
    if _cuda is None:
        return False, (f"the native module fused_optim._cuda did not import ({_IMPORT_ERROR}); "
                       "reinstall with nvcc available (FUSED_OPTIM_CUDA=1 makes a missing nvcc an error)")
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible to torch"
    return True, f"native module fused_optim._cuda (archs {', '.join(_cuda.compiled_archs())})"


def _check(op: str, roles: Sequence[Sequence[Tensor]], names: Sequence[str], state_from: int):
    """(device, param dtype code, state dtype code) after checking what the native side cannot
    see: one CUDA device, params and grads of one dtype, the states of one dtype. Raises
    ValueError before anything is modified."""
    params = roles[0]
    if not params:
        raise ValueError(f"fused_optim.cuda_backend.{op}: empty parameter list")
    device, dtype = params[0].device, params[0].dtype
    if device.type != _DEVICE_TYPE:
        raise ValueError(f"fused_optim.cuda_backend.{op}: params must be CUDA tensors, got {device}")
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"fused_optim.cuda_backend.{op}: unsupported param dtype {dtype}")
    state_dtype = roles[state_from][0].dtype if len(roles) > state_from else dtype
    if state_dtype not in _DTYPE_CODES:
        raise ValueError(f"fused_optim.cuda_backend.{op}: unsupported state dtype {state_dtype}")
    for k, (role, name) in enumerate(zip(roles, names)):
        if len(role) != len(params):
            raise ValueError(f"fused_optim.cuda_backend.{op}: {len(role)} {name} for {len(params)} params")
        want = dtype if k < state_from else state_dtype
        for p, t in zip(params, role):
            if t.device != device:
                raise ValueError(f"fused_optim.cuda_backend.{op}: {name} on {t.device}, params on {device}")
            if t.dtype != want:
                raise ValueError(f"fused_optim.cuda_backend.{op}: {name} of dtype {t.dtype}, expected {want}")
            if t.shape != p.shape:
                raise ValueError(f"fused_optim.cuda_backend.{op}: a {name} tensor has shape {tuple(t.shape)}, "
                                 f"its param {tuple(p.shape)}")
    return device, _DTYPE_CODES[dtype], _DTYPE_CODES[state_dtype]


def _steps(op: str, steps: Sequence[Tensor], count: int, device: torch.device):
    """(host values, device addresses) of the per-param step tensors: one list is filled."""
    if len(steps) != count:
        raise ValueError(f"fused_optim.cuda_backend.{op}: {len(steps)} steps for {count} params")
    if not steps:
        return [], []
    on_device = steps[0].device.type == _DEVICE_TYPE
    for s in steps:
        if s.dim() != 0 or s.dtype != torch.float32 or (s.device.type == _DEVICE_TYPE) != on_device:
            raise ValueError(f"fused_optim.cuda_backend.{op}: steps must be 0-dim float32 tensors, "
                             "all on the CPU or all on the params' device")
        if on_device and s.device != device:
            raise ValueError(f"fused_optim.cuda_backend.{op}: a step is on {s.device}, params on {device}")
    if on_device:
        return [], [s.data_ptr() for s in steps]
    return [float(s) for s in steps], []


def _scalar(op: str, name: str, t: Optional[Tensor], dtype: torch.dtype, device: torch.device) -> int:
    """Device address of an optional 0-dim scalar the kernels read (0 when absent)."""
    if t is None:
        return 0
    if t.dim() != 0 or t.dtype != dtype or t.device != device:
        raise ValueError(f"fused_optim.cuda_backend.{op}: {name} must be a 0-dim {dtype} tensor on {device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")
    return t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _staged(op: str, roles, writable, mixed: Optional[Mixed]) -> Staged:
    """The call's address lists: its roles, then the masters/remainders of those modes (written
    when the call writes the params)."""
    extras = _param_modes.checked_extras(f"fused_optim.cuda_backend.{op}", roles[0], mixed)
    if extras is not None:
        roles, writable = list(roles) + [extras], list(writable[:len(roles)]) + [writable[0]]
    return Staged(roles, writable)


def _mode_args(mixed: Optional[Mixed], with_seed: bool) -> dict:
    """The native call's param-mode arguments (none for plain params)."""
    if mixed is None:
        return {}
    args = {"param_mode": mixed.param_mode,
            "tensor_indices": [int(i) & 0xFFFFFFFF for i in (mixed.tensor_indices or [])]}
    if with_seed:
        args["seed"] = mixed.seed & 0xFFFFFFFF
    return args


# ---- native calls, each a custom op (the mixed-precision modes call the functions themselves:
# eager steps only, see _mixed_precision.MasterStep) ----

def _adam(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
             max_exp_avg_sqs: List[Tensor], steps: List[Tensor], lr: float, beta1: float, beta2: float, eps: float,
             weight_decay: float, decoupled: bool, amsgrad: bool, maximize: bool, grad_scale: Optional[Tensor],
             found_inf: Optional[Tensor], mixed: Optional["Mixed"] = None) -> None:
    op = "adam_step"
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    device, dtype, state_dtype = _check(op, roles, ["params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"], 2)
    values, addresses = _steps(op, steps, len(params), device)
    staged = _staged(op, roles, [True, False, True, True, True], mixed)
    _cuda.adam_step(
        staged.addresses, staged.numels, values, addresses, dtype, state_dtype, lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize,
        grad_scale=_scalar(op, "grad_scale", grad_scale, torch.float32, device),
        found_inf=_scalar(op, "found_inf", found_inf, torch.float32, device),
        device=device.index or 0, stream=_stream(device), **_mode_args(mixed, True),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::cuda_adam_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs",
                                                                  "max_exp_avg_sqs"))
def _adam_op(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
             max_exp_avg_sqs: List[Tensor], steps: List[Tensor], lr: float, beta1: float, beta2: float, eps: float,
             weight_decay: float, decoupled: bool, amsgrad: bool, maximize: bool, grad_scale: Optional[Tensor],
             found_inf: Optional[Tensor]) -> None:
    _adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay, decoupled,
          amsgrad, maximize, grad_scale, found_inf)


@_adam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
      decoupled, amsgrad, maximize, grad_scale, found_inf) -> None:
    return None


def _adamomentum(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                    max_exp_avg_sqs: List[Tensor], steps: List[Tensor], lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, decoupled: bool, amsgrad: bool, rectify: bool,
                    grad_scale: Optional[Tensor], found_inf: Optional[Tensor], mixed: Optional["Mixed"] = None) -> None:
    op = "adamomentum_step"
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    device, dtype, state_dtype = _check(op, roles, ["params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"], 2)
    values, addresses = _steps(op, steps, len(params), device)
    staged = _staged(op, roles, [True, False, True, True, True], mixed)
    _cuda.adamomentum_step(
        staged.addresses, staged.numels, values, addresses, dtype, state_dtype, lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad, rectify=rectify,
        grad_scale=_scalar(op, "grad_scale", grad_scale, torch.float32, device),
        found_inf=_scalar(op, "found_inf", found_inf, torch.float32, device),
        device=device.index or 0, stream=_stream(device), **_mode_args(mixed, True),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::cuda_adamomentum_step",
                         mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"))
def _adamomentum_op(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                    max_exp_avg_sqs: List[Tensor], steps: List[Tensor], lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, decoupled: bool, amsgrad: bool, rectify: bool,
                    grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    _adamomentum(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
                 decoupled, amsgrad, rectify, grad_scale, found_inf)


@_adamomentum_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
      decoupled, amsgrad, rectify, grad_scale, found_inf) -> None:
    return None


def _dualadam(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                 global_step: Tensor, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 switch_rate: float, grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
                 mixed: Optional["Mixed"] = None) -> None:
    op = "dualadam_step"
    roles = [params, grads, exp_avgs, exp_avg_sqs]
    device, dtype, state_dtype = _check(op, roles, ["params", "grads", "exp_avgs", "exp_avg_sqs"], 2)
    if global_step.dim() != 0 or global_step.dtype != torch.float64:
        raise ValueError(f"fused_optim.cuda_backend.{op}: global_step must be a 0-dim float64 tensor")
    if global_step.device.type == _DEVICE_TYPE:
        if global_step.device != device:
            raise ValueError(f"fused_optim.cuda_backend.{op}: global_step on {global_step.device}, params on {device}")
        step_value, step_address = 0.0, global_step.data_ptr()
    else:
        step_value, step_address = float(global_step), 0
    staged = _staged(op, roles, [True, False, True, True], mixed)
    _cuda.dualadam_step(
        staged.addresses, staged.numels, dtype, state_dtype, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
        weight_decay=weight_decay, switch_rate=switch_rate, global_step=step_value,
        global_step_address=step_address,
        grad_scale=_scalar(op, "grad_scale", grad_scale, torch.float32, device),
        found_inf=_scalar(op, "found_inf", found_inf, torch.float32, device),
        device=device.index or 0, stream=_stream(device), **_mode_args(mixed, True),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::cuda_dualadam_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def _dualadam_op(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                 global_step: Tensor, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                 switch_rate: float, grad_scale: Optional[Tensor], found_inf: Optional[Tensor]) -> None:
    _dualadam(params, grads, exp_avgs, exp_avg_sqs, global_step, lr, beta1, beta2, eps, weight_decay, switch_rate,
              grad_scale, found_inf)


@_dualadam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, global_step, lr, beta1, beta2, eps, weight_decay, switch_rate,
      grad_scale, found_inf) -> None:
    return None


def _adai_second_moment(params: List[Tensor], grads: List[Tensor], exp_avg_sqs: List[Tensor], steps: List[Tensor],
                           beta2: float, weight_decay: float, decoupled: bool,
                           grad_scale: Optional[Tensor], mixed: Optional["Mixed"] = None) -> Tensor:
    op = "adai_second_moment"
    roles = [params, grads, exp_avg_sqs]
    device, dtype, state_dtype = _check(op, roles, ["params", "grads", "exp_avg_sqs"], 2)
    values, addresses = _steps(op, steps, len(params), device)
    staged = _staged(op, roles, [False, False, False], mixed)
    chunks = _cuda.chunk_count(staged.numels)
    partials = torch.empty(max(chunks, 1), dtype=torch.float64, device=device)
    out = torch.empty((), dtype=torch.float64, device=device)
    _cuda.adai_vhat_sum(
        staged.addresses, staged.numels, values, addresses, dtype, state_dtype, beta2=beta2,
        weight_decay=weight_decay, decoupled=decoupled,
        grad_scale=_scalar(op, "grad_scale", grad_scale, torch.float32, device),
        partials=partials.data_ptr(), partials_len=partials.numel(), out=out.data_ptr(),
        device=device.index or 0, stream=_stream(device), **_mode_args(mixed, False),
    )
    return out


@_dispatch.custom_op("fused_optim::cuda_adai_second_moment", mutates_args=())
def _adai_second_moment_op(params: List[Tensor], grads: List[Tensor], exp_avg_sqs: List[Tensor], steps: List[Tensor],
                           beta2: float, weight_decay: float, decoupled: bool,
                           grad_scale: Optional[Tensor]) -> Tensor:
    return _adai_second_moment(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, grad_scale)


@_adai_second_moment_op.register_fake
def _(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, grad_scale):
    return params[0].new_empty((), dtype=torch.float64)


def _adai_clip_sums(params: List[Tensor], grads: List[Tensor], exp_avg_sqs: List[Tensor], steps: List[Tensor],
                       beta2: float, weight_decay: float, decoupled: bool, norm_type: float,
                       grad_scale: Optional[Tensor], mixed: Optional["Mixed"] = None) -> Tensor:
    op = "adai_clip_sums"
    roles = [params, grads, exp_avg_sqs]
    device, dtype, state_dtype = _check(op, roles, ["params", "grads", "exp_avg_sqs"], 2)
    values, addresses = _steps(op, steps, len(params), device)
    staged = _staged(op, roles, [False, False, False], mixed)
    chunks = _cuda.chunk_count(staged.numels)
    partials = torch.empty(max(4 * chunks, 1), dtype=torch.float64, device=device)
    out = torch.empty(4, dtype=torch.float64, device=device)
    _cuda.adai_clip_sums(
        staged.addresses, staged.numels, values, addresses, dtype, state_dtype, beta2=beta2,
        weight_decay=weight_decay, decoupled=decoupled, norm_type=norm_type,
        grad_scale=_scalar(op, "grad_scale", grad_scale, torch.float32, device),
        partials=partials.data_ptr(), partials_len=partials.numel(), out=out.data_ptr(),
        device=device.index or 0, stream=_stream(device), **_mode_args(mixed, False),
    )
    return out


@_dispatch.custom_op("fused_optim::cuda_adai_clip_sums", mutates_args=())
def _adai_clip_sums_op(params: List[Tensor], grads: List[Tensor], exp_avg_sqs: List[Tensor], steps: List[Tensor],
                       beta2: float, weight_decay: float, decoupled: bool, norm_type: float,
                       grad_scale: Optional[Tensor]) -> Tensor:
    return _adai_clip_sums(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, norm_type, grad_scale)


@_adai_clip_sums_op.register_fake
def _(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, norm_type, grad_scale):
    return params[0].new_empty(4, dtype=torch.float64)


def _adai_update(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                    beta1_prods: List[Tensor], steps: List[Tensor], lr: float, beta0: float, beta2: float, eps: float,
                    weight_decay: float, decoupled: bool, vbar: Tensor, grad_scale: Optional[Tensor],
                    found_inf: Optional[Tensor], mixed: Optional["Mixed"] = None) -> None:
    op = "adai_update"
    roles = [params, grads, exp_avgs, exp_avg_sqs, beta1_prods]
    device, dtype, state_dtype = _check(op, roles, ["params", "grads", "exp_avgs", "exp_avg_sqs", "beta1_prods"], 2)
    values, addresses = _steps(op, steps, len(params), device)
    staged = _staged(op, roles, [True, False, True, True, True], mixed)
    _cuda.adai_update(
        staged.addresses, staged.numels, values, addresses, dtype, state_dtype, lr=lr, beta0=beta0, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled=decoupled,
        vbar=_scalar(op, "vbar", vbar, torch.float64, device),
        grad_scale=_scalar(op, "grad_scale", grad_scale, torch.float32, device),
        found_inf=_scalar(op, "found_inf", found_inf, torch.float32, device),
        device=device.index or 0, stream=_stream(device), **_mode_args(mixed, True),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::cuda_adai_update", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "beta1_prods"))
def _adai_update_op(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor],
                    beta1_prods: List[Tensor], steps: List[Tensor], lr: float, beta0: float, beta2: float, eps: float,
                    weight_decay: float, decoupled: bool, vbar: Tensor, grad_scale: Optional[Tensor],
                    found_inf: Optional[Tensor]) -> None:
    _adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, lr, beta0, beta2, eps, weight_decay,
                 decoupled, vbar, grad_scale, found_inf)


@_adai_update_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, lr, beta0, beta2, eps, weight_decay, decoupled,
      vbar, grad_scale, found_inf) -> None:
    return None


def _need_module() -> None:
    if _cuda is None:
        raise RuntimeError(available()[1])


# ---- the backend's step functions ----

# Each public function takes the param-mode keywords of _mixed_precision.MasterStep (param_mode,
# param_extras, seed, tensor_indices; eager steps only, see _param_modes.py)


def _run(op, function, args, mode_kwargs):
    return _param_modes.run(op, function, args, mode_kwargs, _dispatch.call)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: Optional[List[Tensor]], steps, *,
              lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
              grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None, **mode) -> None:
    """One Adam (decoupled=False) or AdamW step over a group; steps are the counts before it."""
    _need_module()
    if not params:
        return
    _run(_adam_op, _adam, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                           list(max_exp_avg_sqs) if amsgrad else [], list(steps), float(lr), float(beta1), float(beta2),
                           float(eps), float(weight_decay), bool(decoupled), bool(amsgrad), bool(maximize), grad_scale,
                           found_inf), mode)


def adamomentum_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: Optional[List[Tensor]], steps, *,
                     lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, rectify,
                     grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None, **mode) -> None:
    """One AdaMomentum step over a group; steps are the counts before it."""
    _need_module()
    if not params:
        return
    _run(_adamomentum_op, _adamomentum, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                                         list(max_exp_avg_sqs) if amsgrad else [], list(steps), float(lr),
                                         float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled),
                                         bool(amsgrad), bool(rectify), grad_scale, found_inf), mode)


def dualadam_step(params, grads, exp_avgs, exp_avg_sqs, *, global_step, lr, beta1, beta2, eps, weight_decay,
                  switch_rate, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
                  **mode) -> None:
    """One DualAdam/InvAdam step over a group; global_step is the count before it (a 0-dim
    float64 tensor, CPU or CUDA, or a number)."""
    _need_module()
    if not params:
        return
    if not torch.is_tensor(global_step):
        global_step = torch.tensor(float(global_step), dtype=torch.float64)
    _run(_dualadam_op, _dualadam, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), global_step,
                                   float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                                   float(switch_rate), grad_scale, found_inf), mode)


# v_sums (Adai's carried sums of exp_avg_sq, backends.py) are not kept by this backend: its pass 1
# reads v itself, and Adai drops the sums after its update.


def adai_second_moment(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled,
                       grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None, v_sums=None,
                       **mode) -> Tensor:
    """Adai pass 1: the group's sum of the new vhat, a 0-dim float64 tensor on the device.
    Reads g, v (and p with L2) and writes nothing: pass 2 updates v (so found_inf needs no
    check here: pass 2 skips). Deterministic (fixed reduction tree, no atomics)."""
    _need_module()
    if not params:
        return torch.zeros((), dtype=torch.float64)
    return _run(_adai_second_moment_op, _adai_second_moment,
                (list(params), list(grads), list(exp_avg_sqs), list(steps), float(beta2), float(weight_decay),
                 bool(decoupled), grad_scale), mode)


def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, norm_type,
                   grad_scale: Optional[Tensor] = None, v_sums=None, **mode) -> Tensor:
    """Adai pass 1 with max_grad_norm (reference: adai_clip_sums): [norm part, c0, c1, c2], a
    float64 tensor of 4 on the device, from one read of g and v (and p with L2); writes
    nothing. Deterministic (fixed reduction trees, no atomics)."""
    _need_module()
    if not params:
        out = torch.zeros(4, dtype=torch.float64)
        out[0] = math.inf if norm_type == -math.inf else 0.0
        return out
    return _run(_adai_clip_sums_op, _adai_clip_sums,
                (list(params), list(grads), list(exp_avg_sqs), list(steps), float(beta2), float(weight_decay),
                 bool(decoupled), float(norm_type), grad_scale), mode)


def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, lr, beta0, beta2, eps,
                weight_decay, decoupled, vbar: Tensor, grad_scale: Optional[Tensor] = None,
                found_inf: Optional[Tensor] = None, v_sums=None, **mode) -> None:
    """Adai pass 2, given vbar (0-dim float64 on the device): v, beta1_prod, m and p."""
    _need_module()
    if not params:
        return
    _run(_adai_update_op, _adai_update,
         (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(beta1_prods), list(steps), float(lr),
          float(beta0), float(beta2), float(eps), float(weight_decay), bool(decoupled), vbar, grad_scale, found_inf),
         mode)
