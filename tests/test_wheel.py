"""A wheel built from a clean copy of the sources installs into a fresh virtual environment
and steps every optimizer on the native CPU backend there (issue #7). Slow (~1 min: it
compiles the native module); CI runs it with the rest. tests/test_manylinux_wheel.py does the
same for the manylinux wheel of tools/build_wheel.py."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .wheel_helpers import copy_sources, install_and_step_every_optimizer


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_steps_every_optimizer(tmp_path):
    source = copy_sources(tmp_path / "source")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(dist), "-q"],
                   check=True, cwd=tmp_path)
    wheels = list(dist.glob("fused_optim-*.whl"))
    # the name says what it carries: the CUDA module too where nvcc is found (as setup.py looks)
    with_cuda = bool(shutil.which("nvcc") or Path("/usr/local/cuda/bin/nvcc").exists()) and \
        os.environ.get("FUSED_OPTIM_CUDA") != "0"
    assert len(wheels) == 1 and ("+cu" if with_cuda else "+cpu") in wheels[0].name, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        assert any(n.startswith("fused_optim/_cuda") for n in archive.namelist()) == with_cuda

    python = install_and_step_every_optimizer(wheels[0], tmp_path)
    if with_cuda:  # the CUDA module imports without a GPU and knows its archs
        archs = subprocess.run([str(python), "-c", "from fused_optim import _cuda; print(_cuda.archs)"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert archs.returncode == 0 and "sm_90" in archs.stdout, archs.stderr
