"""Which backends exist on this machine, why the others do not, and the choice per group.

Backends: "torch" (fused_optim.reference: any device, the fallback), "cpu" (the native
module fused_optim._cpu), "cuda" (the native module fused_optim._cuda) and "triton"
(fused_optim.triton_kernels; on CPU tensors too under TRITON_INTERPRET=1, for tests).
"auto" picks cuda -> triton -> torch for GPU tensors and cpu -> torch for CPU tensors, and
warns once when it has to fall back. FUSED_OPTIM_BACKEND in the environment replaces "auto".
An explicitly requested backend that cannot serve raises an error that says why.

The contract every backend module implements (all tensors of one call on one device, the
params of one dtype; lists may be long and tensors zero-size or non-contiguous):

    adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, lr, beta1, beta2,
              eps, weight_decay, decoupled, amsgrad, maximize, grad_scale=None, found_inf=None)
    adamomentum_step(... the same, with rectify in place of maximize ...)
    dualadam_step(params, grads, exp_avgs, exp_avg_sqs, *, global_step, lr, beta1, beta2, eps,
                  weight_decay, switch_rate, grad_scale=None, found_inf=None)
    adai_second_moment(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled,
                       grad_scale=None, found_inf=None, v_sums=None) -> 0-dim float64 tensor: sum of vhat
    adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, lr, beta0, beta2,
                eps, weight_decay, decoupled, vbar, grad_scale=None, found_inf=None, v_sums=None)
    adai_clip_sums(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled,
                   norm_type, grad_scale=None, v_sums=None) -> float64 tensor of 4: [norm part, c0, c1, c2]
                   (reference.adai_clip_sums: Adai's pass 1 when max_grad_norm is set)

- steps: each param's counter, a 0-dim float32 tensor holding the count BEFORE this step
  (the update uses t = step + 1); global_step: DualAdam's one counter, 0-dim float64, the
  same way. Backends only read them; the optimizer advances them once every call succeeded.
- vbar: 0-dim float64 tensor, Adai's global mean of vhat over every param with a grad.
- grad_scale / found_inf: a GradScaler's scale (grads are divided by it) and its inf flag
  (nonzero: the step changes nothing).
- Adai's pass 1 (adai_second_moment, or adai_clip_sums when the grads are clipped) writes
  nothing; adai_update does the whole element update, v included.
- v_sums: None, or Adai's carried sums (optimizers/adai.py), one 0-dim float64 CPU tensor per
  param holding sum(exp_avg_sq) as this backend's last update left it, NaN where not known.
  Only a backend that keeps them gets them (cpu: its pass 1 then reads g alone); its pass 1
  reads them (exp_avg_sq where NaN) and its adai_update leaves each holding sum(exp_avg_sq),
  a step skipped by found_inf too. The other backends take the argument and ignore it.
"""
import importlib
import os
import warnings
from functools import lru_cache
from typing import Any, Dict, Tuple

import torch

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")
# Parameter dtypes every backend serves: fp32/fp64 natively, bf16/fp16 with fp32 math.
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class BackendUnavailable(RuntimeError):
    """A backend was requested explicitly but cannot serve these parameters."""


@lru_cache(maxsize=None)
def availability(backend: str) -> Tuple[bool, str]:
    """(available, reason) for a backend on this machine, whatever the tensors."""
    if backend == "torch":
        return True, "pure-torch reference, always available"
    if backend == "cpu":
        try:
            importlib.import_module(f"{__package__}._cpu")
        except ImportError as err:
            return False, f"the native module fused_optim._cpu did not import ({err}); reinstall with a C++ compiler"
        return True, "native module fused_optim._cpu"
    if backend in ("cuda", "triton"):
        try:
            module = importlib.import_module(f"{__package__}.{backend}_backend")
        except ImportError as err:
            return False, f"fused_optim.{backend}_backend did not import ({err})"
        return module.available()
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def _version() -> str:
    from . import __version__

    return __version__


def check_backend_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


def requested_backend(backend: str) -> str:
    """The constructor's backend, with FUSED_OPTIM_BACKEND replacing "auto"."""
    check_backend_name(backend)
    if backend == "auto":
        env = os.environ.get("FUSED_OPTIM_BACKEND", "").strip()
        if env:
            try:
                return check_backend_name(env)
            except ValueError as err:
                raise ValueError(f"FUSED_OPTIM_BACKEND: {err}") from None
    return backend


def serves(backend: str, device: torch.device, state_dtype=None, capturable: bool = False) -> Tuple[bool, str]:
    """Whether a backend can update tensors on this device with states of this dtype (None:
    the default) and, if asked, capturable (no host reads of device values), and why not."""
    ok, why = availability(backend)
    if not ok:
        return False, why
    if backend == "cpu" and device.type != "cpu":
        return False, f"the cpu backend updates CPU tensors only, these are on {device}"
    if backend == "cuda" and device.type != "cuda":
        return False, f"the cuda backend updates CUDA tensors only, these are on {device}"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and _triton_interpreted()):
        return False, f"the triton backend updates CUDA tensors (CPU ones only under TRITON_INTERPRET=1), these are on {device}"
    if backend == "cpu" and state_dtype is not None:
        return False, f"the cpu backend keeps states in the math dtype (state_dtype={state_dtype} is not served)"
    if backend == "torch" and capturable and device.type != "cpu":
        return False, "the torch backend reads step counters on the host; capturable=True needs cuda or triton"
    return True, why


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def trace_choice_as_constant() -> None:
    """torch.compile calls choose() at trace time and keeps the answer (a backend name) as a
    constant: what it looks at (imports, the environment) is not traceable and does not change
    in a run. Marked when the first optimizer is made, not at import: the mark imports
    torch._dynamo (and with it triton and sympy, ~2 s), which constructing any torch.optim
    optimizer imports anyway, but `import fused_optim` and `python -m fused_optim.env` need not."""
    if not getattr(choose, "_marked_constant", False):
        torch.compiler.assume_constant_result(choose)
        choose._marked_constant = True


def choose(backend: str, device: torch.device, state_dtype=None, capturable: bool = False) -> str:
    """The backend that will update a group on `device` (backend from requested_backend)."""
    if backend != "auto":
        ok, why = serves(backend, device, state_dtype, capturable)
        if not ok:
            raise BackendUnavailable(f"backend={backend!r} cannot serve: {why}")
        return backend
    candidates = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
    reasons = []
    for name in candidates:
        ok, why = serves(name, device, state_dtype, capturable)
        if ok:
            if reasons:  # e.g. triton because the CUDA module was not built: say so once
                _warn_once(f"fused_optim: using the {name} backend for {device.type} tensors ({'; '.join(reasons)})")
            return name
        reasons.append(f"{name}: {why}")
    ok, why = serves("torch", device, state_dtype, capturable)
    if not ok:
        raise BackendUnavailable(f"no backend can serve these parameters ({'; '.join(reasons)}; torch: {why})")
    _warn_once(f"fused_optim: no native backend for {device.type} tensors ({'; '.join(reasons)}); using the torch reference backend")
    return "torch"


def _triton_interpreted() -> bool:
    from .triton_kernels import multi_tensor

    return multi_tensor.INTERPRETED


_implementations: Dict[str, Any] = {}
_operators: Dict[str, Any] = {}


def implementation(backend: str):
    """The module with the step functions of a backend (the contract in this module's doc)."""
    module = _implementations.get(backend)
    if module is None:
        if backend == "torch":
            from . import torch_backend as module
        elif backend == "cpu":
            from . import cpu_backend as module
        elif backend in ("cuda", "triton") and availability(backend)[0]:
            module = importlib.import_module(f"{__package__}.{backend}_backend")
        else:
            raise BackendUnavailable(f"backend={backend!r}: {availability(backend)[1]}")
        _implementations[backend] = module
    return module


def operators(backend: str):
    """The same functions as torch.library operators (fused_optim._ops), for torch.compile.
    Both lookups are dictionary reads once FusedOptimizer registered the backend in eager
    mode, so torch.compile traces them without a break."""
    ops = _operators.get(backend)
    if ops is None:
        module = implementation(backend)
        if backend in ("cuda", "triton"):
            ops = module  # their functions already are thin wrappers around their operators
        else:
            from . import _ops

            ops = _ops.operators(backend, module)
        _operators[backend] = ops
    return ops
