"""Builds fused_optim and its torch-independent native module.

fused_optim._cpu: g++ with OpenMP and SIMD (runtime ISA dispatch, see csrc/include/fused_optim/
platform.h), bound with pybind11 and taking raw addresses, so it links no libtorch and one
build serves every torch version.

Environment: MAX_JOBS (parallel compile jobs), FUSED_OPTIM_CPU_DEBUG=1 (-O0 -g, for gdb),
FUSED_OPTIM_VERSION_LABEL (the local version label, see version()).
"""
import os
import re
import sys

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def version() -> str:
    """fused_optim.__version__ with a local label saying what the build carries, as torch's
    wheels do (2.13.0+cpu): "+cpu" for the CPU module alone. FUSED_OPTIM_VERSION_LABEL
    overrides the label; set it empty for a plain version (an sdist for an index)."""
    with open(os.path.join(ROOT, "fused_optim", "__init__.py")) as f:
        base = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
    label = os.environ.get("FUSED_OPTIM_VERSION_LABEL", "cpu")
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


ParallelCompile("MAX_JOBS", default=2).install()

if sys.platform == "linux":
    ext_modules = [cpu_extension()]
else:
    # the flags above are g++/GNU OpenMP ones; elsewhere the package installs without the
    # native module and backends.py reports the cpu backend as unavailable (torch still works)
    print("fused_optim: the native CPU module builds on Linux only; installing without it", file=sys.stderr)
    ext_modules = []

setup(
    version=version(),
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
