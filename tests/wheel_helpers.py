"""What the wheel tests share (issue #7): a clean copy of the sources to build from, and a
fresh virtual environment that installs a wheel and steps every optimizer from it."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

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
    assert "stepped 7 optimizers" in result.stdout
    assert str(venv) in result.stdout  # the wheel's copy ran, not the source tree
    return python
