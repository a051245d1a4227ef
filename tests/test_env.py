"""`python -m fused_optim.env`: runs, its JSON parses and agrees with availability(); importing
it loads no backend or native module (collect() does, where the report needs them)."""
import importlib.util
import json
import os
import subprocess
import sys

import fused_optim
from fused_optim import _compat


def _run(*args):
    # without FUSED_OPTIM_BACKEND, so the report does not depend on the caller's environment
    env = {k: v for k, v in os.environ.items() if k != "FUSED_OPTIM_BACKEND"}
    return subprocess.run([sys.executable, "-m", "fused_optim.env", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_text_report_names_every_backend():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    for name in fused_optim.BACKENDS:
        if name != "auto":
            assert f"  {name} " in proc.stdout
    assert "CUDA archs compiled in:" in proc.stdout


def test_json_report_agrees_with_availability():
    proc = _run("--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["fused_optim"] == fused_optim.__version__
    assert info["backends"]["cpu"]["available"] == fused_optim.availability("cpu")[0]
    assert set(info["backends"]) == set(fused_optim.BACKENDS) - {"auto"}
    assert info["compiled_step"] == ("traced" if _compat.STEP_COMPILES else "eager (torch < 2.6)")


def test_importing_the_module_loads_no_backend():
    loaded_later = ("fused_optim._cpu", "fused_optim._cuda", "fused_optim.cuda_backend",
                    "fused_optim.triton_backend", "fused_optim.triton_kernels")
    probe = f"import sys, fused_optim.env; print(sorted(m for m in sys.modules if m.startswith({loaded_later!r})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_triton_version_without_importing_it():
    from fused_optim.env import _triton_version

    if importlib.util.find_spec("triton") is None:
        assert _triton_version() is None
    else:
        import triton

        assert _triton_version() == triton.__version__
