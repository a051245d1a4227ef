"""The +cu12 wheel (issue #23): tools/build_wheel.py --cu12 builds it with CUDA 12.4 from
Debian 13, which tools/cuda_toolkit.py fetches through apt into a cache folder.

The fast tests check how the script finds the Debian archive in the apt sources and that an
archive it cannot reach is a clear error. The build test is opt-in, FUSED_OPTIM_TEST_CU12=1:
nvcc compiles the CUDA module for three targets (about 6 minutes on 2 cores), and the first run
also fetches the toolkit (a 1 GB download, then about a minute of unpacking; 0.3 GB stay in
~/.cache/fused_optim/cuda-12-trixie or FUSED_OPTIM_CUDA12_CACHE). Where the archive cannot be
reached it skips and says why."""
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .wheel_helpers import (ROOT, assert_manylinux, build_wheel, copy_sources, install_and_step_every_optimizer,
                            shared_objects, skip_without_wheel_tools)

_spec = importlib.util.spec_from_file_location("cuda_toolkit", ROOT / "tools" / "cuda_toolkit.py")
cuda_toolkit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_toolkit)

DEB822 = textwrap.dedent("""\
    Types: deb
    URIs: http://mirror.example/debian
    Suites: bookworm bookworm-updates
    Components: main
    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

    Types: deb
    URIs: http://mirror.example/debian-security
    Suites: bookworm-security
    Components: main
    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
    """)
ONE_LINE = textwrap.dedent("""\
    # a vendor's repository may name the release as its suite
    deb [arch=amd64 signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.example/linux/debian bookworm stable
    deb http://other.example/debian/ bookworm main contrib
    deb-src http://other.example/debian bookworm main
    """)


def test_the_debian_entry_of_the_apt_sources_is_the_archive():
    deb822 = cuda_toolkit.parse_sources(Path("debian.sources"), DEB822)
    one_line = cuda_toolkit.parse_sources(Path("sources.list"), ONE_LINE)
    assert cuda_toolkit.os_codename('ID=debian\nVERSION_CODENAME=bookworm\n') == "bookworm"
    # the entry signed by Debian's keyring wins over a vendor's with the same suite
    assert cuda_toolkit.pick_debian_entry(one_line + deb822, "bookworm") == (
        "http://mirror.example/debian", "/usr/share/keyrings/debian-archive-keyring.gpg")
    # unsigned entries: the first for the release with component main (the vendor's has none)
    assert cuda_toolkit.pick_debian_entry(one_line, "bookworm") == ("http://other.example/debian", None)
    assert cuda_toolkit.pick_debian_entry(deb822, "trixie") is None


def test_an_unreachable_archive_is_a_clear_error(tmp_path, monkeypatch):
    if shutil.which("apt-get") is None:
        pytest.skip("no apt-get here")
    closed = "http://127.0.0.1:9/debian"  # the discard port: nothing listens
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_toolkit.py"), "--cache", str(tmp_path / "cache"),
                             "--archive", closed], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"apt-get update from {closed} (trixie) failed" in result.stderr, result.stderr
    assert not (tmp_path / "cache" / "toolkit").exists()
    # the kind of error the build test skips on
    monkeypatch.setenv("FUSED_OPTIM_DEBIAN_ARCHIVE", closed)
    with pytest.raises(cuda_toolkit.ArchiveUnavailable):
        cuda_toolkit.ensure(tmp_path / "cache", log=lambda line: None)


# what the CUDA module may need: glibc's libraries and the C++ runtime (the CUDA runtime is
# linked in and dlopens the driver)
SYSTEM_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libstdc++.so.6",
               "libgcc_s.so.1", "ld-linux-x86-64.so.2"}


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FUSED_OPTIM_TEST_CU12") != "1",
                    reason="opt-in (about 7 minutes, and a 1 GB download the first time): FUSED_OPTIM_TEST_CU12=1")
def test_cu12_wheel_needs_only_the_driver_and_steps_every_optimizer(tmp_path):
    skip_without_wheel_tools()
    try:
        home = cuda_toolkit.ensure(log=print)
    except cuda_toolkit.ArchiveUnavailable as e:
        pytest.skip(f"no CUDA 12 toolkit to build with, the Debian archive is out of reach: {e}")
    source = copy_sources(tmp_path / "source", extra=["tools"])
    result, wheel = build_wheel(source, tmp_path, "--cu12", timeout=1800)
    assert_manylinux(wheel, result, "cu12")

    libs = shared_objects(wheel, tmp_path / "unpacked")
    (cuda_name,) = [name for name in libs if name.startswith("fused_optim/_cuda")]
    assert set(libs[cuda_name]) <= SYSTEM_LIBS, libs[cuda_name]
    assert b"libcuda.so.1" in (tmp_path / "unpacked" / cuda_name).read_bytes()  # the driver, loaded at run time
    # A100 and H100 machine code, PTX for newer GPUs; each kernel's parameters fit CUDA 12's limit
    images = cuda_toolkit.cuda_images(tmp_path / "unpacked" / cuda_name, str(home / "bin" / "cuobjdump"))
    assert images["sass"] == ["sm_80", "sm_90"] and images["ptx"] == ["compute_90"], images
    sizes = [size for kernels in images["params"].values() for size in kernels.values()]
    assert sorted(images["params"]) == ["sm_80", "sm_90"] and 0 < max(sizes) <= cuda_toolkit.PARAM_LIMIT
    assert f"largest parameter space {max(sizes)} bytes" in result.stdout

    python = install_and_step_every_optimizer(wheel, tmp_path)
    # installed beside a CPU torch on a machine without a GPU, the module imports and says
    # what it was built for; ldd finds everything it needs
    probe = subprocess.run([str(python), "-c", "from fused_optim import _cuda; print(_cuda.__file__); print(_cuda.archs)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    module, archs = probe.stdout.splitlines()
    assert archs == "['sm_80', 'sm_90', 'compute_90']" and str(tmp_path / "venv") in module
    ldd = subprocess.run(["ldd", module], capture_output=True, text=True, check=True).stdout
    assert "not found" not in ldd and "libcuda" not in ldd and "libtorch" not in ldd, ldd
