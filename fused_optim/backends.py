"""Which backends exist on this machine, why the others do not, and the choice per group.

Backends: "torch" (fused_optim.reference: any device, the fallback), "cpu" (the native
module fused_optim._cpu), "cuda" (the native module fused_optim._cuda) and "triton"
(fused_optim.triton_kernels; on CPU tensors too under TRITON_INTERPRET=1, for tests).
"auto" picks cuda -> triton -> torch for GPU tensors and cpu -> torch for CPU tensors, and
warns once when it has to fall back. FUSED_OPTIM_BACKEND in the environment replaces "auto".
An explicitly requested backend that cannot serve raises an error that says why.

What a backend computes is declared once in fused_optim.operations (the contract); each
backend module registers its functions there, and implementation() hands them to the optimizers.
"""
import importlib
import os
import warnings
from functools import lru_cache
from typing import Any, Dict, Tuple

import torch

from . import operations

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")


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


def implementation(backend: str):
    """The operations of a backend (fused_optim.operations.BackendOperations): each runs the
    backend's function in eager mode and its torch.library operator while torch.compile
    traces a step. The operators are defined here, on first use in eager mode, so that a
    compiled step only looks them up."""
    ops = _implementations.get(backend)
    if ops is None:
        if backend == "torch":
            from . import torch_backend as module
        elif backend == "cpu":
            from . import cpu_backend as module
        elif backend in ("cuda", "triton") and availability(backend)[0]:
            module = importlib.import_module(f"{__package__}.{backend}_backend")
        else:
            raise BackendUnavailable(f"backend={backend!r}: {availability(backend)[1]}")
        extras = {"advance_steps": module.advance_steps} if hasattr(module, "advance_steps") else {}
        ops = operations.BackendOperations(backend, extras)
        for name in operations.implementations(backend):
            operations.operator(backend, name)
        _implementations[backend] = ops
    return ops
