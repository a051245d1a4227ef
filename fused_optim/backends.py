"""Which backends exist on this machine, why the others do not, and the choice per group.

Backends: "torch" (fused_optim.reference: any device, the fallback), "cpu" (the native
module fused_optim._cpu), "cuda" and "triton" (GPU kernels, not part of this version).
"auto" picks cuda -> triton -> torch for GPU tensors and cpu -> torch for CPU tensors, and
warns once when it has to fall back. FUSED_OPTIM_BACKEND in the environment replaces "auto".
An explicitly requested backend that cannot serve raises an error that says why.
"""
import importlib
import os
import warnings
from functools import lru_cache
from typing import Tuple

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
        return False, f"the {backend} backend is not part of fused_optim {_version()} (tracked in the project's issues)"
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


def serves(backend: str, device: torch.device) -> Tuple[bool, str]:
    """Whether a backend can update tensors on this device, and why not."""
    ok, why = availability(backend)
    if not ok:
        return False, why
    if backend == "cpu" and device.type != "cpu":
        return False, f"the cpu backend updates CPU tensors only, these are on {device}"
    return True, why


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def choose(backend: str, device: torch.device) -> str:
    """The backend that will update a group on `device` (backend from requested_backend)."""
    if backend != "auto":
        ok, why = serves(backend, device)
        if not ok:
            raise BackendUnavailable(f"backend={backend!r} cannot serve: {why}")
        return backend
    candidates = ("cpu",) if device.type == "cpu" else ("cuda", "triton")
    reasons = []
    for name in candidates:
        ok, why = serves(name, device)
        if ok:
            return name
        reasons.append(f"{name}: {why}")
    _warn_once(f"fused_optim: no native backend for {device.type} tensors ({'; '.join(reasons)}); using the torch reference backend")
    return "torch"


def implementation(backend: str):
    """The module with the step functions of a backend; all share the reference's signatures."""
    if backend == "torch":
        from . import reference

        return reference
    if backend == "cpu":
        from . import cpu_backend

        return cpu_backend
    raise BackendUnavailable(f"backend={backend!r}: {availability(backend)[1]}")
