"""Builds fused_optim and its torch-independent native module.

fused_optim._cpu: g++ with OpenMP and SIMD (runtime ISA dispatch, see csrc/include/fused_optim/
platform.h), bound with pybind11 and taking raw addresses, so it links no libtorch and one
build serves every torch version.

fused_optim._cuda: the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc) and their pybind11
bindings (compiled by the host compiler, no CUDA headers), with the CUDA runtime linked
statically: like _cpu it links no libtorch, and it builds on a machine without a GPU.
setuptools cannot compile .cu files, so build_ext below runs nvcc itself and links the objects.

Environment: MAX_JOBS (parallel compile jobs), FUSED_OPTIM_CPU_DEBUG=1 (-O0 -g, for gdb),
FUSED_OPTIM_VERSION_LABEL (the local version label, see version()),
FUSED_OPTIM_CUDA (unset: build _cuda when nvcc is found; 1: require it; 0: skip it),
CUDA_HOME (the toolkit; else /usr/local/cuda or nvcc's location),
TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0+PTX"; default sm_80, sm_90 and compute_90 PTX).
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def version(cuda_major=None) -> str:
    """fused_optim.__version__ with a local label saying what the build carries, as torch's
    wheels do (2.13.0+cpu): "+cpu" for the CPU module alone, "+cu13" with a CUDA module built
    by CUDA 13. FUSED_OPTIM_VERSION_LABEL overrides the label; set it empty for a plain
    version (an sdist for an index)."""
    with open(os.path.join(ROOT, "fused_optim", "__init__.py")) as f:
        base = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
    default = f"cu{cuda_major}" if cuda_major is not None else "cpu"
    label = os.environ.get("FUSED_OPTIM_VERSION_LABEL", default)
    return f"{base}+{label}" if label else base


def cpu_extension():
    sources = ["csrc/bindings_cpu.cpp"] + sorted(
        os.path.join("csrc/cpu", f) for f in os.listdir(os.path.join(ROOT, "csrc/cpu")) if f.endswith(".cpp")
    )
    debug = os.environ.get("FUSED_OPTIM_CPU_DEBUG") == "1"
    flags = ["-O0", "-g"] if debug else ["-O3"]
    flags += [
        "-fopenmp",
        # sqrt without errno, and no floating-point traps to preserve (nothing reads the
        # exception flags): both let the loops vectorize (branches become selects); neither
        # changes any result
        "-fno-math-errno",
        "-fno-trapping-math",
        # no a*b+c fusion: results do not depend on which ISA clone runs, and the fp32 math
        # rounds each operation as the torch reference does
        "-ffp-contract=off",
        "-Wall",
    ]
    return Pybind11Extension(
        "fused_optim._cpu",
        sources,
        include_dirs=["csrc/include", "csrc"],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"],
        cxx_std=17,
    )


def find_cuda():
    """(nvcc, CUDA_HOME) or None when no toolkit is found."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None
    if not home:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return nvcc, home


def cuda_major(nvcc) -> int:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"release (\d+)\.", out).group(1))


def cuda_archs():
    """[(compute, code), ...] nvcc -gencode pairs from TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX",
    spaces also separate), and the arch names for fused_optim._cuda.compiled_archs(). The
    default sm_80 + sm_90 + compute_90 PTX: A100/H100 machine code, and PTX that newer GPUs
    compile at load time."""
    spec = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or "8.0;9.0+PTX"
    gencode, names = [], []
    for entry in re.split(r"[;\s]+", spec):
        if not entry:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", entry)
        if not m:
            raise SystemExit(f"fused_optim: cannot parse TORCH_CUDA_ARCH_LIST entry {entry!r} (want e.g. 8.0 or 9.0+PTX)")
        num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        gencode.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        names.append(f"sm_{num}")
        if m.group(4):
            gencode.append(f"-gencode=arch=compute_{num},code=compute_{num}")
            names.append(f"compute_{num}")
    return gencode, names


def cuda_extension(cuda):
    """The bindings as a normal extension; the .cu sources ride along in `cuda_sources` and
    CudaBuildExt compiles them with nvcc into extra objects."""
    nvcc, home = cuda
    lib_dirs = [d for d in (os.path.join(home, "lib64"), os.path.join(home, "lib"),
                            os.path.join(home, "targets", "x86_64-linux", "lib"))
                if os.path.exists(os.path.join(d, "libcudart_static.a"))]
    if not lib_dirs:
        raise SystemExit(f"fused_optim: libcudart_static.a not found under {home}")
    gencode, names = cuda_archs()
    cu_dir = os.path.join(ROOT, "csrc", "cuda")
    include_dir = os.path.join(ROOT, "csrc", "include", "fused_optim")
    ext = Pybind11Extension(
        "fused_optim._cuda",
        ["csrc/bindings_cuda.cpp"],
        include_dirs=["csrc/include", "csrc"],
        define_macros=[("FO_CUDA_ARCHS", '"' + ";".join(names) + '"')],
        # the static runtime needs these system libraries (the CUDA docs' static-link recipe)
        extra_link_args=[f"-L{lib_dirs[0]}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
        cxx_std=17,
    )
    ext.cuda_sources = sorted(os.path.join("csrc/cuda", f) for f in os.listdir(cu_dir) if f.endswith(".cu"))
    ext.depends = [os.path.join("csrc/cuda", f) for f in sorted(os.listdir(cu_dir))] + [
        os.path.join(dirpath, f) for dirpath, _, files in os.walk(include_dir) for f in sorted(files)
    ]
    ext.nvcc = nvcc
    ext.nvcc_flags = [
        "-std=c++17",
        "-O3",
        # no a*b+c fusion: each operation rounds as in the CPU module and the torch reference,
        # and DualAdam's fp64 blend predicate 1 - t xi (evaluated on the device when the step
        # lives there) rounds exactly as Python's; the kernels are memory-bound, so it is free
        "--fmad=false",
        "-Xcompiler", "-fPIC",
        "-Xcompiler", "-fvisibility=hidden",
        f"-I{os.path.join(ROOT, 'csrc', 'include')}",
        f"-I{os.path.join(ROOT, 'csrc')}",
    ] + gencode
    return ext


class CudaBuildExt(build_ext):
    """pybind11's build_ext, plus nvcc for an extension that carries cuda_sources: compiles
    them (MAX_JOBS in parallel, -fPIC) into objects that the host linker adds to the module."""

    def run(self):
        # a build without the CUDA module must not ship one an earlier build left in build/
        # (bdist_wheel packs the whole build directory): `FUSED_OPTIM_CUDA=0 pip wheel .` after
        # a CUDA build would otherwise make a "+cpu" wheel that carries _cuda
        if not any(ext.name == "fused_optim._cuda" for ext in self.extensions):
            stale = os.path.join(self.build_lib, "fused_optim")
            if os.path.isdir(stale):
                for name in os.listdir(stale):
                    if name.startswith("_cuda") and name.endswith(".so"):
                        os.remove(os.path.join(stale, name))
        super().run()

    def build_extension(self, ext):
        sources = getattr(ext, "cuda_sources", None)
        if sources:
            # objects live under a directory named by the nvcc flags (archs included): a build
            # for another TORCH_CUDA_ARCH_LIST never links objects compiled for the old one
            flags = hashlib.sha1(" ".join([ext.nvcc] + ext.nvcc_flags).encode()).hexdigest()[:12]
            folder = os.path.join(self.build_temp, f"cuda-{flags}")
            objects = [os.path.join(folder, os.path.basename(s) + ".o") for s in sources]
            # an object is rebuilt when older than its source or any header (no dependency scan)
            newest_header = max(os.path.getmtime(p) for p in ext.depends)
            stale = [(s, o) for s, o in zip(sources, objects)
                     if self.force or not os.path.exists(o)
                     or os.path.getmtime(o) < max(os.path.getmtime(s), newest_header)]
            os.makedirs(folder, exist_ok=True)
            jobs = max(1, int(os.environ.get("MAX_JOBS", "2") or 2))
            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(lambda so: self._nvcc(ext, *so), stale))
            ext.extra_objects = objects
            ext.depends = list(ext.depends) + objects  # relink when an object changed
        super().build_extension(ext)

    @staticmethod
    def _nvcc(ext, source, obj):
        cmd = [ext.nvcc] + ext.nvcc_flags + ["-c", source, "-o", obj]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


ParallelCompile("MAX_JOBS", default=2).install()

CUDA_MAJOR = None
if sys.platform == "linux":
    ext_modules = [cpu_extension()]
    cuda_mode = os.environ.get("FUSED_OPTIM_CUDA", "").strip()
    if cuda_mode not in ("", "0", "1"):
        raise SystemExit(f"fused_optim: FUSED_OPTIM_CUDA must be 0, 1 or unset, got {cuda_mode!r}")
    if cuda_mode != "0":
        cuda = find_cuda()
        if cuda is not None:
            ext_modules.append(cuda_extension(cuda))
            CUDA_MAJOR = cuda_major(cuda[0])
        elif cuda_mode == "1":
            raise SystemExit("fused_optim: FUSED_OPTIM_CUDA=1 but no nvcc was found (set CUDA_HOME or put nvcc on PATH)")
        else:
            print("fused_optim: nvcc not found; building without the CUDA module", file=sys.stderr)
else:
    # the flags above are g++/GNU OpenMP ones; elsewhere the package installs without the
    # native module and backends.py reports the cpu backend as unavailable (torch still works)
    print("fused_optim: the native CPU module builds on Linux only; installing without it", file=sys.stderr)
    ext_modules = []

setup(
    version=version(CUDA_MAJOR),
    ext_modules=ext_modules,
    cmdclass={"build_ext": CudaBuildExt},
)
