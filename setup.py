"""Builds fused_optim and its torch-independent native modules.

fused_optim._cpu: g++ with OpenMP and SIMD (runtime ISA dispatch, see csrc/include/fused_optim/
platform.h), bound with pybind11 and taking raw addresses, so it links no libtorch and one
build serves every torch version.

fused_optim._cuda: the CUDA kernels (csrc/cuda/*.cu, compiled by nvcc) and their pybind11
bindings and shared host code (csrc/host, compiled by the host compiler, no CUDA headers), with
the CUDA runtime linked statically: like _cpu it links no libtorch, and it builds on a machine without a GPU.
setuptools cannot compile .cu files, so build_ext below runs nvcc itself and links the objects.
By default it is built only where it can run (an NVIDIA GPU is visible, see gpu_visible(), and
nvcc is found): nvcc takes several minutes for it. FUSED_OPTIM_CUDA=1 builds it anyway, e.g. a
wheel for a GPU cluster on a build machine without a GPU; the build says on stderr which it does
and why (cuda_choice()).

Objects are kept between builds, also those of `pip install -e` (which builds in a fresh
temporary directory each time): an object is recompiled only when its source or a header it
includes (the compiler's dependency file) is newer, under a folder named by everything else
that goes into it (flags, compiler, pybind11, Python). An editable install keeps them in
build/objects/.

Environment: MAX_JOBS (parallel compile jobs), FUSED_OPTIM_CPU_DEBUG=1 (-O0 -g, for gdb),
FUSED_OPTIM_VERSION_LABEL (the local version label, see version()),
FUSED_OPTIM_CUDA (unset: build _cuda where a GPU is visible and nvcc is found; 1: require it;
0: skip it), CUDA_HOME (the toolkit; else /usr/local/cuda or nvcc's location),
TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0+PTX"; default sm_80, sm_90 and compute_90 PTX).
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pybind11
from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# the compiler writes the headers an object includes next to it (foo.o -> foo.d), which
# stale_object() reads: no list of headers to keep up to date by hand
DEPFILE = ["-MMD"]


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


def tree_files(*folders):
    """Every file under folders (relative to the source tree): an extension's `depends`, with
    which setuptools relinks a module whose file in build/ is older than one of them (which
    objects to recompile, stale_object() decides)."""
    return [os.path.join(dirpath, f) for folder in folders
            for dirpath, _, files in sorted(os.walk(os.path.join(ROOT, folder))) for f in sorted(files)]


def sources_in(folder, suffix):
    """The files of one folder of the source tree ending in suffix, relative to it, sorted."""
    return sorted(os.path.join(folder, f) for f in os.listdir(os.path.join(ROOT, folder)) if f.endswith(suffix))


# Host code both modules link (the argument checks and the registry of csrc/include/fused_optim/
# call.h and checks.h), compiled by the host compiler into each; csrc/bindings.h is the binding
# code both share.
HOST_SOURCES = sources_in("csrc/host", ".cpp")
SHARED_DEPENDS = tree_files("csrc/include", "csrc/host") + [os.path.join(ROOT, "csrc", "bindings.h")]


def cpu_extension():
    sources = ["csrc/bindings_cpu.cpp"] + sources_in("csrc/cpu", ".cpp") + HOST_SOURCES
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
    ] + DEPFILE
    return Pybind11Extension(
        "fused_optim._cpu",
        sources,
        include_dirs=["csrc/include", "csrc"],
        extra_compile_args=flags,
        extra_link_args=["-fopenmp"],
        depends=tree_files("csrc/cpu") + SHARED_DEPENDS,
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


def nvcc_version(nvcc) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout


def cuda_major(nvcc) -> int:
    return int(re.search(r"release (\d+)\.", nvcc_version(nvcc)).group(1))


def gpu_visible() -> bool:
    """Whether CUDA code could run here: an NVIDIA device node (/dev/nvidia0, ...: a container
    has only those of the GPUs it was given) or WSL2's GPU device beside its libcuda.
    /proc/driver/nvidia would say yes in a container given no GPU on a GPU host (the driver is
    the host's), and nvidia-smi is missing from many CUDA containers and costs a subprocess on
    every run of this file."""
    if glob.glob("/dev/nvidia[0-9]*"):
        return True
    return os.path.exists("/dev/dxg") and os.path.exists("/usr/lib/wsl/lib/libcuda.so.1")


def cuda_choice():
    """(cuda or None, why): the toolkit to build fused_optim._cuda with (find_cuda()) or None
    to leave it out, from FUSED_OPTIM_CUDA, and the line that tells the user."""
    mode = os.environ.get("FUSED_OPTIM_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"fused_optim: FUSED_OPTIM_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return None, "fused_optim: FUSED_OPTIM_CUDA=0: building without the CUDA module"
    cuda = find_cuda()
    if mode == "1":
        if cuda is None:
            raise SystemExit("fused_optim: FUSED_OPTIM_CUDA=1 but no nvcc was found (set CUDA_HOME or put nvcc on PATH)")
        return cuda, f"fused_optim: FUSED_OPTIM_CUDA=1: building the CUDA module with {cuda[0]} (nvcc takes minutes)"
    gpu = gpu_visible()
    if cuda is not None and gpu:
        return cuda, (f"fused_optim: NVIDIA GPU found: building the CUDA module with {cuda[0]} (nvcc takes "
                      "minutes; FUSED_OPTIM_CUDA=0 skips it)")
    if cuda is not None:
        return None, (f"fused_optim: no NVIDIA GPU here, so the CUDA module is not built although {cuda[0]} is "
                      "present; FUSED_OPTIM_CUDA=1 builds it anyway (e.g. a wheel for GPU machines)")
    if gpu:
        return None, ("fused_optim: NVIDIA GPU found but no nvcc: building without the CUDA module "
                      "(set CUDA_HOME or put nvcc on PATH; FUSED_OPTIM_CUDA=1 makes this an error)")
    return None, "fused_optim: no NVIDIA GPU and no nvcc here: building without the CUDA module"


def tell(line: str) -> None:
    """Prints line on stderr, which the build log keeps. pip shows a build's output only with
    -v or when it fails (a build of minutes would look stuck), so the line also goes to the
    terminal pip runs in, when there is one and we are in its foreground (with pip -v it then
    shows twice)."""
    print(line, file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        return  # run directly: the user saw it
    try:
        with open("/dev/tty", "w") as tty:
            # a background job writing to its terminal may be stopped (stty tostop)
            if os.tcgetpgrp(tty.fileno()) == os.getpgrp():
                tty.write("\n" + line + "\n")
    except OSError:
        pass  # no terminal (CI, a pipe): the log has it


def dependencies(obj):
    """The files under the source tree that obj was compiled from (its source and the headers
    it includes), from the compiler's dependency file, or None without one. Files outside the
    tree (pybind11, Python, CUDA headers) are left out: object_key() stands for them, and an
    isolated build's copy of pybind11 is gone after the build."""
    depfile = os.path.splitext(obj)[0] + ".d"
    try:
        with open(depfile) as f:
            text = f.read().replace("\\\n", " ")
    except OSError:
        return None
    names = [n.replace("\\ ", " ") for n in re.split(r"(?<!\\)\s+", text.split(":", 1)[-1]) if n]
    paths = [os.path.normpath(os.path.join(ROOT, n)) for n in names]
    return [p for p in paths if p.startswith(ROOT + os.sep)]


def stale_object(obj, source) -> bool:
    """Whether obj must be compiled (again): no dependency file, or a file it lists is newer
    than obj or gone. The flags are not looked at: object_key() names obj's folder. (source:
    the signature of pybind11's ParallelCompile hook; the dependency file lists it.)"""
    deps = dependencies(obj)
    if not os.path.exists(obj) or not deps:
        return True
    built = os.path.getmtime(obj)
    return any(not os.path.exists(p) or os.path.getmtime(p) > built for p in deps)


def object_key(ext, compiler) -> str:
    """A name for everything besides source and headers that goes into ext's objects: flags,
    compilers and their versions, pybind11's version, the Python they are built for. Include
    folders outside the source tree are left out (pip's isolated build puts pybind11 in a new
    temporary one each time; its version stands for it)."""
    parts = [ext.name, ext.extra_compile_args, ext.define_macros, ext.undef_macros,
             [d for d in ext.include_dirs if not os.path.isabs(d)], getattr(ext, "cxx_std", None),
             pybind11.__version__, sys.version, sysconfig.get_config_var("EXT_SUFFIX"),
             sysconfig.get_paths()["include"], getattr(ext, "nvcc_flags", None)]
    for command in (compiler.compiler_so, getattr(compiler, "compiler_so_cxx", None)):
        if command:
            parts.append(command)
            parts.append(subprocess.run([command[0], "--version"], capture_output=True, text=True).stdout)
    if getattr(ext, "nvcc", None):
        parts += [ext.nvcc, nvcc_version(ext.nvcc)]
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


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
    ext = Pybind11Extension(
        "fused_optim._cuda",
        ["csrc/bindings_cuda.cpp"] + HOST_SOURCES,
        include_dirs=["csrc/include", "csrc"],
        define_macros=[("FO_CUDA_ARCHS", '"' + ";".join(names) + '"')],
        extra_compile_args=DEPFILE,
        # the static runtime needs these system libraries (the CUDA docs' static-link recipe)
        extra_link_args=[f"-L{lib_dirs[0]}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
        cxx_std=17,
    )
    ext.cuda_sources = sources_in("csrc/cuda", ".cu")
    ext.depends = tree_files("csrc/cuda") + SHARED_DEPENDS
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
    them (MAX_JOBS in parallel, -fPIC) into objects that the host linker adds to the module.
    Objects go to a folder per extension and object_key(), and are reused while
    stale_object() says so."""

    note = ""  # cuda_choice()'s line, said when the build starts

    def finalize_options(self):
        super().finalize_options()
        if self.editable_mode:
            # setuptools gives an editable build a new temporary directory each time, which
            # would compile every object again on each `pip install -e`
            build_base = self.get_finalized_command("build").build_base
            self.build_temp = os.path.join(os.path.abspath(build_base), "objects")

    def run(self):
        if self.note:
            tell(self.note)
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
        build_temp = self.build_temp
        self.build_temp = os.path.join(build_temp, f"{ext.name}-{object_key(ext, self.compiler)}")
        if self.force:  # build_ext --force: nothing is reused
            shutil.rmtree(self.build_temp, ignore_errors=True)
        try:
            sources = getattr(ext, "cuda_sources", None)
            if sources:
                objects = [os.path.join(self.build_temp, s + ".o") for s in sources]
                stale = [(s, o) for s, o in zip(sources, objects) if stale_object(o, s)]
                jobs = max(1, int(os.environ.get("MAX_JOBS", "2") or 2))
                with ThreadPoolExecutor(jobs) as pool:
                    list(pool.map(lambda so: self._nvcc(ext, *so), stale))
                ext.extra_objects = objects
                ext.depends = list(ext.depends) + objects  # relink when an object changed
            super().build_extension(ext)
        finally:
            self.build_temp = build_temp

    @staticmethod
    def _nvcc(ext, source, obj):
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        cmd = [ext.nvcc] + ext.nvcc_flags + ["-MMD", "-MF", os.path.splitext(obj)[0] + ".d", "-c", source, "-o", obj]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


ParallelCompile("MAX_JOBS", default=2, needs_recompile=stale_object).install()

CUDA_MAJOR = None
if sys.platform == "linux":
    ext_modules = [cpu_extension()]
    cuda, CudaBuildExt.note = cuda_choice()
    if cuda is not None:
        ext_modules.append(cuda_extension(cuda))
        CUDA_MAJOR = cuda_major(cuda[0])
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
