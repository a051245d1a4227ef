"""The shared math headers compile as CUDA device code (nvcc is on the CI machine, no GPU is
needed): the CUDA backend will include them unchanged."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_math_headers_compile_for_the_gpu(tmp_path):
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_90", f"-I{ROOT / 'csrc' / 'include'}", "-c",
         str(ROOT / "tests" / "device_math_check.cu"), "-o", str(tmp_path / "check.o")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
