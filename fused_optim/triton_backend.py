"""The "triton" backend: the reference's step functions as Triton kernels, one launch per call
over the whole tensor list (per pass for Adai; pass 1 adds a one-program fixed-order sum).

Contract (differs from fused_optim.reference in the steps): `steps` are 0-dim float32 tensors
holding each param's step count BEFORE this step; the kernels use t = step + 1 and never
write them. On the params' device they are read by the kernel (capturable: no host sync);
on the CPU next to CUDA params they are read on the host and copied over in one transfer.
DualAdam's `global_step` is a 0-dim float64 tensor (the count before this step), read by the
kernel. `grad_scale` divides the grads, a nonzero `found_inf` leaves everything unchanged;
both are read by the kernel.

Every launch goes through a torch.library custom op (fused_optim::triton_*), so torch.compile
and CUDA-graph capture see one opaque op with declared mutations.

CPU tensors are served only when the kernels run under the Triton interpreter
(TRITON_INTERPRET=1 set before triton_kernels is imported), which is how CI without a GPU
runs this backend.
"""
from typing import List, Optional, Tuple

import torch

from . import _dispatch, _param_modes
from ._param_modes import Mixed

_IMPORT_ERROR: Optional[BaseException] = None
try:
    from .triton_kernels import adai as _adai
    from .triton_kernels import adai_clip as _adai_clip
    from .triton_kernels import adam as _adam
    from .triton_kernels import adamomentum as _adamomentum
    from .triton_kernels import dualadam as _dualadam
    from .triton_kernels import multi_tensor as _mt
except ImportError as error:  # triton missing or too old (TritonTooOld): available() says so
    _IMPORT_ERROR = error


def _unavailable_because() -> str:
    # by name: the class is defined in the very package whose import it aborted
    if type(_IMPORT_ERROR).__name__ == "TritonTooOld":
        return str(_IMPORT_ERROR)
    return f"triton is not importable: {_IMPORT_ERROR}"


# Step counters on the params' device are read by the kernel; elsewhere (CPU counters next to
# CUDA params) on the host. Tests set this to take the host path under the interpreter too,
# where both are on the CPU, to check that the two paths agree.
_FORCE_HOST_STEPS = False


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
    return _FORCE_HOST_STEPS or steps[0].device != device


def _plan(kind: str, staged: "_mt.Staged", steps: Optional[List[torch.Tensor]], device: torch.device,
          tags: Optional[List[int]] = None):
    host = steps is not None and _host_steps(steps, device)
    plan = _mt.PLANS.get(kind, staged.columns, steps, host, device, tags)
    if host:
        plan.fill_steps(steps)
    return plan


def _dtypes(params: List[torch.Tensor], grads: List[torch.Tensor], *states: List[torch.Tensor]) -> dict:
    """The kernel's dtype constexprs: P for params and grads, S for the moment states. The
    table holds bare addresses, so a tensor of another dtype would be misread: checked here
    (on the first tensor of each list; a call serves one dtype combination)."""
    param_dtype, state_dtype = params[0].dtype, states[0][0].dtype
    if param_dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"the triton backend serves fp32, fp64, bf16 and fp16 params, not {param_dtype}")
    if grads[0].dtype != param_dtype:
        raise TypeError(f"grads must have the params' dtype {param_dtype}, got {grads[0].dtype}")
    allowed = (torch.float64,) if param_dtype == torch.float64 else (torch.float32, torch.bfloat16)
    for state in states:
        if state and state[0].dtype != state_dtype or state_dtype not in allowed:
            raise TypeError(f"states of {param_dtype} params must share one dtype of {allowed}, got "
                            f"{[s[0].dtype for s in states if s]}")
    return {"P": _mt.tl_dtype(param_dtype), "S": _mt.tl_dtype(state_dtype), "MATH": _mt.math_dtype(param_dtype)}


def _staged(roles, writable, mixed: Optional[Mixed]):
    """(staged lists, tags, mode constexprs) of a call: its roles, then the masters/remainders
    of those param modes (written when the call writes the params); for stochastic rounding
    each tensor's base key as a table tag (param_modes.py). EXTRA: that column's index."""
    extras = _param_modes.checked_extras("fused_optim.triton_backend", roles[0], mixed)
    modes = {"MODE": 0 if mixed is None else mixed.param_mode, "EXTRA": len(roles)}
    tags = None
    if extras is not None:
        roles, writable = list(roles) + [extras], list(writable[:len(roles)]) + [writable[0]]
    elif mixed is not None:  # stochastic rounding
        from .optimizers._mixed_precision import base_keys

        indices = list(mixed.tensor_indices or [])
        if len(indices) != len(roles[0]):
            raise ValueError(f"fused_optim.triton_backend: {len(indices)} tensor indices for {len(roles[0])} params")
        tags = base_keys(mixed.seed, indices)
    return _mt.Staged(roles, writable), tags, modes


def _run(op, launch, args, mode_kwargs):
    return _param_modes.run(op, launch, args, mode_kwargs, _dispatch.call)


def _optional(t: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
    return t if t is not None else _mt.dummy(device)


def _scaling(grad_scale, found_inf, device):
    """Pointer args and flags of the GradScaler inputs."""
    return ([_optional(grad_scale, device), _optional(found_inf, device)],
            {"HAS_GRAD_SCALE": grad_scale is not None, "HAS_FOUND_INF": found_inf is not None})


def _weight_decay_flags(weight_decay: float, decoupled: bool) -> dict:
    # decided on the host as the native math does (neither when wd == 0): exact mirrors of
    # the reference's `if weight_decay != 0` branches
    return {"APPLY_DECAY": decoupled and weight_decay != 0, "APPLY_L2": (not decoupled) and weight_decay != 0}


# ---------------------------------------------------------------------------------------------
# Adam / AdamW
# ---------------------------------------------------------------------------------------------


def _adam_launch(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor], steps: List[torch.Tensor],
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
    amsgrad: bool, maximize: bool, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
    mixed: Optional["Mixed"] = None,
) -> None:
    if not params:
        return
    device = _device_of(params)
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    staged, tags, modes = _staged(roles, [True, False, True, True, True], mixed)
    plan = _plan("adam", staged, steps, device, tags)
    pointers, flags = _scaling(grad_scale, found_inf, device)
    _mt.launch(
        _adam.adam_kernel, plan,
        [plan.table, plan.blocks, *pointers, float(lr), float(beta1), float(beta2), 1.0 - beta1, 1.0 - beta2,
         float(eps), float(weight_decay), 1.0 - lr * weight_decay],
        dict(**modes, **_dtypes(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs), AMSGRAD=amsgrad,
             MAXIMIZE=maximize,
             **flags,
             **_weight_decay_flags(weight_decay, decoupled)),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::triton_adam_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs",
                                                                    "max_exp_avg_sqs"))
def _adam_op(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor], steps: List[torch.Tensor],
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
    amsgrad: bool, maximize: bool, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
) -> None:
    _adam_launch(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
                 decoupled, amsgrad, maximize, grad_scale, found_inf)


@_adam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
      decoupled, amsgrad, maximize, grad_scale, found_inf) -> None:
    return None


def adam_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay,
    decoupled, amsgrad, maximize, grad_scale=None, found_inf=None, **mode,
) -> None:
    _run(
        _adam_op, _adam_launch, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
        list(max_exp_avg_sqs) if amsgrad else [], list(steps), float(lr), float(beta1), float(beta2),
        float(eps), float(weight_decay), bool(decoupled), bool(amsgrad), bool(maximize), grad_scale, found_inf,), mode,
    )


# ---------------------------------------------------------------------------------------------
# AdaMomentum
# ---------------------------------------------------------------------------------------------


def _adamomentum_launch(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor], steps: List[torch.Tensor],
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
    amsgrad: bool, rectify: bool, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
    mixed: Optional["Mixed"] = None,
) -> None:
    if not params:
        return
    device = _device_of(params)
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    staged, tags, modes = _staged(roles, [True, False, True, True, True], mixed)
    plan = _plan("adamomentum", staged, steps, device, tags)
    pointers, flags = _scaling(grad_scale, found_inf, device)
    _mt.launch(
        _adamomentum.adamomentum_kernel, plan,
        [plan.table, plan.blocks, *pointers, float(lr), float(beta1), float(beta2), 1.0 - beta1, 1.0 - beta2,
         float(eps), float(weight_decay), 1.0 - lr * weight_decay],
        # the reference applies the decoupled decay even for wd == 0: p * 1.0 is exact, so
        # skipping it then is the same result
        dict(**modes, **_dtypes(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs), AMSGRAD=amsgrad,
             RECTIFY=rectify,
             **flags,
             **_weight_decay_flags(weight_decay, decoupled)),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::triton_adamomentum_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs",
                                                                           "max_exp_avg_sqs"))
def _adamomentum_op(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor], steps: List[torch.Tensor],
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
    amsgrad: bool, rectify: bool, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
) -> None:
    _adamomentum_launch(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
                        weight_decay, decoupled, amsgrad, rectify, grad_scale, found_inf)


@_adamomentum_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
      decoupled, amsgrad, rectify, grad_scale, found_inf) -> None:
    return None


def adamomentum_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay,
    decoupled, amsgrad, rectify, grad_scale=None, found_inf=None, **mode,
) -> None:
    _run(
        _adamomentum_op, _adamomentum_launch, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
        list(max_exp_avg_sqs) if amsgrad else [], list(steps), float(lr), float(beta1), float(beta2),
        float(eps), float(weight_decay), bool(decoupled), bool(amsgrad), bool(rectify), grad_scale, found_inf,), mode,
    )


# ---------------------------------------------------------------------------------------------
# InvAdam / DualAdam
# ---------------------------------------------------------------------------------------------


def _dualadam_launch(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], global_step: torch.Tensor, lr: float, beta1: float, beta2: float,
    eps: float, weight_decay: float, switch_rate: float, grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
    mixed: Optional["Mixed"] = None,
) -> None:
    if not params:
        return
    device = _device_of(params)
    staged, tags, modes = _staged([params, grads, exp_avgs, exp_avg_sqs], [True, False, True, True], mixed)
    plan = _plan("dualadam", staged, None, device, tags)
    # a CPU counter next to CUDA params travels in one small copy; the kernel reads it
    step = _mt.to_device_async(global_step, device)
    pointers, flags = _scaling(grad_scale, found_inf, device)
    _mt.launch(
        _dualadam.dualadam_kernel, plan,
        [plan.table, plan.blocks, step, *pointers, float(lr), float(beta1), float(beta2), 1.0 - beta1,
         1.0 - beta2, float(eps), 1.0 - lr * weight_decay, float(switch_rate)],
        dict(**modes, **_dtypes(params, grads, exp_avgs, exp_avg_sqs), APPLY_DECAY=weight_decay != 0, **flags),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::triton_dualadam_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def _dualadam_op(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], global_step: torch.Tensor, lr: float, beta1: float, beta2: float,
    eps: float, weight_decay: float, switch_rate: float, grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
) -> None:
    _dualadam_launch(params, grads, exp_avgs, exp_avg_sqs, global_step, lr, beta1, beta2, eps, weight_decay,
                     switch_rate, grad_scale, found_inf)


@_dualadam_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, global_step, lr, beta1, beta2, eps, weight_decay, switch_rate,
      grad_scale, found_inf) -> None:
    return None


def dualadam_step(
    params, grads, exp_avgs, exp_avg_sqs, *, global_step, lr, beta1, beta2, eps, weight_decay, switch_rate,
    grad_scale=None, found_inf=None, **mode,
) -> None:
    if not torch.is_tensor(global_step):
        global_step = torch.tensor(float(global_step), dtype=torch.float64)
    _run(
        _dualadam_op, _dualadam_launch, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), global_step,
                                         float(lr), float(beta1),
        float(beta2), float(eps), float(weight_decay), float(switch_rate), grad_scale, found_inf,), mode,
    )


# ---------------------------------------------------------------------------------------------
# Adai: pass 1 (sum of vhat, v not written) and pass 2 (the update, v included)
# ---------------------------------------------------------------------------------------------

_SUM_BLOCK = 1024


def _adai_second_moment_launch(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor], beta2: float, weight_decay: float, decoupled: bool,
    grad_scale: Optional[torch.Tensor],
    mixed: Optional["Mixed"] = None,
) -> torch.Tensor:
    if not params:
        return torch.zeros((), dtype=torch.float64)
    device = _device_of(params)
    # pass 1 only reads: stage without write-back
    staged, tags, modes = _staged([params, grads, exp_avg_sqs], [False, False, False], mixed)
    plan = _plan("adai_second_moment", staged, steps, device, tags)
    if plan.grid[0] == 0:
        return torch.zeros((), dtype=torch.float64, device=device)
    total = torch.empty((), dtype=torch.float64, device=device)  # the sum kernel writes it
    if plan.partials is None:
        plan.partials = torch.empty(plan.grid[0], dtype=torch.float64, device=device)
    flags = _weight_decay_flags(weight_decay, decoupled)
    _mt.launch(
        _adai.adai_second_moment_kernel, plan,
        [plan.table, plan.blocks, plan.partials, _optional(grad_scale, device), float(beta2), 1.0 - beta2,
         float(weight_decay)],
        dict(**modes, **_dtypes(params, grads, exp_avg_sqs), APPLY_L2=flags["APPLY_L2"],
             HAS_GRAD_SCALE=grad_scale is not None),
    )
    _mt.VARIANTS.record(_adai.sum_partials_kernel, [plan.partials, plan.grid[0], total], {"RBLOCK": _SUM_BLOCK}, {})
    _adai.sum_partials_kernel[(1,)](plan.partials, plan.grid[0], total, RBLOCK=_SUM_BLOCK)
    return total


@_dispatch.custom_op("fused_optim::triton_adai_second_moment", mutates_args=())
def _adai_second_moment_op(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor], beta2: float, weight_decay: float, decoupled: bool,
    grad_scale: Optional[torch.Tensor],
) -> torch.Tensor:
    return _adai_second_moment_launch(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, grad_scale)


@_adai_second_moment_op.register_fake
def _(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, grad_scale) -> torch.Tensor:
    device = params[0].device if params else torch.device("cpu")
    return torch.empty((), dtype=torch.float64, device=device)


# v_sums (Adai's carried sums of exp_avg_sq, backends.py) are not kept by this backend: its pass 1
# reads v itself, and Adai drops the sums after its update.


def adai_second_moment(
    params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, grad_scale=None, found_inf=None,
    v_sums=None, **mode,
) -> torch.Tensor:
    """Sum over every element of every tensor of vhat_new = (beta2 v + (1-beta2) g_eff^2) /
    (1 - beta2^t), a 0-dim fp64 tensor on the params' device. Does NOT write v: adai_update
    recomputes v_new and stores it, so the pair equals the reference pair (and found_inf
    needs no check here: adai_update skips)."""
    return _run(
        _adai_second_moment_op, _adai_second_moment_launch, (list(params), list(grads), list(exp_avg_sqs),
                                                             list(steps), float(beta2), float(weight_decay),
        bool(decoupled), grad_scale,), mode,
    )


def _adai_clip_sums_launch(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor], beta2: float, weight_decay: float, decoupled: bool, norm_type: float,
    grad_scale: Optional[torch.Tensor],
    mixed: Optional["Mixed"] = None,
) -> torch.Tensor:
    device = _device_of(params)
    kind = _adai_clip.norm_kind(norm_type)
    staged, tags, modes = _staged([params, grads, exp_avg_sqs], [False, False, False], mixed)
    plan = _plan("adai_clip_sums", staged, steps, device, tags)
    out = torch.zeros(4, dtype=torch.float64, device=device)
    if plan.grid[0] == 0:  # only empty tensors: nothing to add (a min over no element is +inf)
        if kind == _adai_clip.NORM_MIN:
            out[0] = float("inf")
        return out
    partials = torch.empty(4 * plan.grid[0], dtype=torch.float64, device=device)
    l2 = float(weight_decay) if weight_decay != 0 and not decoupled else 0.0
    _mt.launch(
        _adai_clip.adai_clip_sums_kernel, plan,
        [plan.table, plan.blocks, partials, _optional(grad_scale, device), float(beta2), l2, float(norm_type)],
        dict(**modes, **_dtypes(params, grads, exp_avg_sqs), NORM=kind, APPLY_L2=l2 != 0.0,
             HAS_GRAD_SCALE=grad_scale is not None),
    )
    constexprs = {"NORM": kind, "RBLOCK": _SUM_BLOCK}
    _mt.VARIANTS.record(_adai_clip.clip_totals_kernel, [partials, plan.grid[0], out], constexprs, {})
    _adai_clip.clip_totals_kernel[(4,)](partials, plan.grid[0], out, **constexprs)
    return out


@_dispatch.custom_op("fused_optim::triton_adai_clip_sums", mutates_args=())
def _adai_clip_sums_op(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor], beta2: float, weight_decay: float, decoupled: bool, norm_type: float,
    grad_scale: Optional[torch.Tensor],
) -> torch.Tensor:
    return _adai_clip_sums_launch(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, norm_type,
                                  grad_scale)


@_adai_clip_sums_op.register_fake
def _(params, grads, exp_avg_sqs, steps, beta2, weight_decay, decoupled, norm_type, grad_scale) -> torch.Tensor:
    return torch.empty(4, dtype=torch.float64, device=params[0].device)


def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, norm_type,
                   grad_scale=None, v_sums=None, **mode) -> torch.Tensor:
    """Adai's pass 1 with max_grad_norm (reference: adai_clip_sums): [norm part, c0, c1, c2],
    a float64 tensor of 4 on the device, from one read of g and v (and p with L2); writes
    nothing. Deterministic (fixed-order sums, no atomics)."""
    return _run(
        _adai_clip_sums_op, _adai_clip_sums_launch, (list(params), list(grads), list(exp_avg_sqs), list(steps),
                                                     float(beta2),
        float(weight_decay), bool(decoupled), float(norm_type), grad_scale,), mode,
    )


def _beta1_prod_dtype(params: List[torch.Tensor], beta1_prods: List[torch.Tensor]):
    """beta1_prod may differ from the moments: bf16 moments with an fp32 beta1_prod (see
    adai_update_kernel for why a bf16 one is a poor choice)."""
    dtype = beta1_prods[0].dtype
    allowed = (torch.float64,) if params[0].dtype == torch.float64 else (torch.float32, torch.bfloat16)
    if dtype not in allowed:
        raise TypeError(f"beta1_prod of {params[0].dtype} params must be one of {allowed}, got {dtype}")
    return _mt.tl_dtype(dtype)


def _adai_update_launch(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], beta1_prods: List[torch.Tensor], steps: List[torch.Tensor],
    lr: float, beta0: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
    vbar: torch.Tensor, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
    mixed: Optional["Mixed"] = None,
) -> None:
    if not params:
        return
    device = _device_of(params)
    staged, tags, modes = _staged([params, grads, exp_avgs, exp_avg_sqs, beta1_prods], [True, False, True, True,
                                                                                        True], mixed)
    plan = _plan("adai_update", staged, steps, device, tags)
    vbar = _mt.to_device_async(vbar, device)
    pointers, flags = _scaling(grad_scale, found_inf, device)
    _mt.launch(
        _adai.adai_update_kernel, plan,
        [plan.table, plan.blocks, vbar, *pointers, float(lr), float(beta0), float(beta2), 1.0 - beta2,
         1.0 - eps, float(weight_decay), 1.0 - lr * weight_decay],
        dict(**modes, **_dtypes(params, grads, exp_avgs, exp_avg_sqs), B=_beta1_prod_dtype(params, beta1_prods),
             **flags,
             **_weight_decay_flags(weight_decay, decoupled)),
    )
    staged.finish()


@_dispatch.custom_op("fused_optim::triton_adai_update", mutates_args=("params", "exp_avgs", "exp_avg_sqs",
                                                                      "beta1_prods"))
def _adai_update_op(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor], beta1_prods: List[torch.Tensor], steps: List[torch.Tensor],
    lr: float, beta0: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
    vbar: torch.Tensor, grad_scale: Optional[torch.Tensor], found_inf: Optional[torch.Tensor],
) -> None:
    _adai_update_launch(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, lr, beta0, beta2, eps, weight_decay,
                        decoupled, vbar, grad_scale, found_inf)


@_adai_update_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, lr, beta0, beta2, eps, weight_decay, decoupled,
      vbar, grad_scale, found_inf) -> None:
    return None


def adai_update(
    params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, lr, beta0, beta2, eps, weight_decay,
    decoupled, vbar, grad_scale=None, found_inf=None, v_sums=None, **mode,
) -> None:
    _run(
        _adai_update_op, _adai_update_launch, (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
                                               list(beta1_prods), list(steps), float(lr),
        float(beta0), float(beta2), float(eps), float(weight_decay), bool(decoupled), vbar, grad_scale, found_inf,),
        mode,
    )
