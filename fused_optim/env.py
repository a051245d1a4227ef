"""`python -m fused_optim.env [--json]`: what this install can do on this machine, for bug
reports: versions, CPU, which backends work here (and why the others do not), threads, CUDA.

Importing this module loads nothing beyond the package itself: the backend modules, the native
ones and triton are loaded by collect(), each only where the report needs it (triton's version
comes from its installed metadata), so the report takes not much more than `import fused_optim`."""
import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform

import torch

import fused_optim
from fused_optim import _compat
from fused_optim.backends import BACKENDS, availability


def cpu_model() -> str:
    # platform.processor() is empty or just "x86_64" on Linux; /proc/cpuinfo names the model
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_archs():
    """(archs or None, why none): the archs the CUDA module was compiled for, if there is one."""
    try:
        module = importlib.import_module("fused_optim._cuda")
    except ModuleNotFoundError as err:
        if err.name == "fused_optim._cuda":
            return None, "no CUDA module in this build"
        return None, f"fused_optim._cuda did not import ({err})"
    except ImportError as err:
        return None, f"fused_optim._cuda did not import ({err})"
    archs = getattr(module, "archs", None)
    if archs is None:
        return None, "fused_optim._cuda does not say (no archs attribute)"
    return ([archs] if isinstance(archs, str) else [str(a) for a in archs]), ""


# the distributions that install the `triton` module (torch's nightlies and ROCm builds ship
# their own)
TRITON_DISTRIBUTIONS = ("triton", "pytorch-triton", "pytorch-triton-rocm")


def _triton_version():
    # read without importing triton where its distribution is known (importing it takes a
    # quarter of a second or more); whether it imports and serves is the triton backend's line
    if importlib.util.find_spec("triton") is None:
        return None
    for name in TRITON_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import triton
    except ImportError as err:
        return f"installed, does not import ({err})"
    return triton.__version__


def collect() -> dict:
    archs, archs_why = _cuda_archs()
    cuda = torch.cuda.is_available()
    return {
        "fused_optim": fused_optim.__version__,
        "torch": torch.__version__,
        "triton": _triton_version(),
        # whether torch.compile traces step() into its graph or runs it eagerly (_compat.py)
        "compiled_step": "traced" if _compat.STEP_COMPILES else "eager (torch < 2.6)",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "backends": {
            name: dict(zip(("available", "reason"), availability(name))) for name in BACKENDS if name != "auto"
        },
        "FUSED_OPTIM_BACKEND": os.environ.get("FUSED_OPTIM_BACKEND") or None,
        "cuda_visible": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_archs": archs,
        "cuda_archs_note": archs_why,
    }


def render(info: dict) -> str:
    lines = [
        f"fused_optim     {info['fused_optim']}",
        f"torch           {info['torch']} (torch.compile: step() {info['compiled_step']})",
        f"triton          {info['triton'] or 'not installed'}",
        f"python          {info['python']}",
        f"platform        {info['platform']}",
        f"CPU             {info['cpu']} (torch CPU capability: {info['torch_cpu_capability']})",
        f"torch threads   {info['torch_threads']}",
        "backends:",
    ]
    for name, b in info["backends"].items():
        lines.append(f"  {name:<7} {'available' if b['available'] else 'unavailable':<12} {b['reason']}")
    lines.append(f"FUSED_OPTIM_BACKEND  {info['FUSED_OPTIM_BACKEND'] or 'unset (auto)'}")
    devices = info["cuda_devices"]
    lines.append(f"CUDA visible    {'yes: ' + ', '.join(devices) if info['cuda_visible'] else 'no'}")
    archs = info["cuda_archs"]
    lines.append(f"CUDA archs compiled in: {', '.join(archs) if archs else 'none (' + info['cuda_archs_note'] + ')'}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fused_optim.env", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the same as JSON")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else render(info))


if __name__ == "__main__":
    main()
