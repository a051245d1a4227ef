"""A wheel built from a clean copy of the sources installs into a fresh virtual environment
and steps every optimizer on the native CPU backend there (issue #7). Slow (~1 min: it
compiles the native module); CI runs it with the rest. tests/test_manylinux_wheel.py does the
same for the manylinux wheel of tools/build_wheel.py. Which modules a build carries: the CUDA
module by default only where a GPU is visible, else as FUSED_OPTIM_CUDA says."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from .wheel_helpers import ROOT, copy_sources, install_and_step_every_optimizer

HAVE_NVCC = bool(shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists())  # as setup.py looks


def cuda_module_expected() -> bool:
    """Whether a build here carries the CUDA module: FUSED_OPTIM_CUDA=1 asks for it, 0 leaves it
    out, and unset builds it where nvcc is found and a GPU is visible (torch seeing one stands
    for setup.py's look at the device files)."""
    choice = os.environ.get("FUSED_OPTIM_CUDA", "")
    if choice in ("0", "1"):
        return choice == "1"
    return HAVE_NVCC and torch.cuda.is_available()


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found: no CUDA module to choose")
def test_cuda_module_is_built_by_default_only_where_a_gpu_is_visible():
    env = {k: v for k, v in os.environ.items() if k not in ("FUSED_OPTIM_CUDA", "FUSED_OPTIM_VERSION_LABEL")}
    label = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert label.returncode == 0, label.stderr
    assert ("+cu" in label.stdout) == torch.cuda.is_available(), label.stdout


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_steps_every_optimizer(tmp_path):
    source = copy_sources(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(dist), "-q"],
                   check=True, cwd=tmp_path)
    wheels = list(dist.glob("fused_optim-*.whl"))
    # the name says what it carries
    with_cuda = cuda_module_expected()
    assert len(wheels) == 1 and ("+cu" if with_cuda else "+cpu") in wheels[0].name, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        assert any(n.startswith("fused_optim/_cuda") for n in archive.namelist()) == with_cuda

    python = install_and_step_every_optimizer(wheels[0], tmp_path)
    if with_cuda:  # the CUDA module imports without a GPU and knows its archs
        archs = subprocess.run([str(python), "-c", "from fused_optim import _cuda; print(_cuda.archs)"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert archs.returncode == 0 and "sm_90" in archs.stdout, archs.stderr
