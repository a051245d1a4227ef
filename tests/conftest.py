"""Session-wide test setup.

Without a CUDA device the triton backend runs its kernels under the Triton interpreter on
CPU tensors, which is how CI covers it. Triton reads TRITON_INTERPRET when a kernel is
defined, so it is set here, before any test imports fused_optim's kernels; a GPU machine
runs them compiled on CUDA tensors instead. An explicit setting in the environment wins.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_runtest_logreport(report):
    """FUSED_OPTIM_FAILURE_LOG=path: each failure's id and traceback appended as it happens, so
    a run cut off by a time limit (a lent GPU's) still says what failed and why. Written by
    the process that prints the summary (the xdist controller, or the only process)."""
    path = os.environ.get("FUSED_OPTIM_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a") as f:
        f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n\n")


# Where the suite's time goes on a 2-core machine: kernels run by Triton's interpreter in numpy,
# processes started per test (distributed ranks, wheel builds, examples), torch.compile and
# nvcc. `pytest -m "not slow"` leaves these out (README: the fast selection).
SLOW_FILES = {"test_triton_backend.py", "test_distributed.py", "test_compile.py", "test_manylinux_wheel.py",
              "test_wheel.py", "test_examples.py", "test_device_headers.py"}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.path.name in SLOW_FILES or params.get("backend") == "triton":
            item.add_marker(slow)


@pytest.fixture
def every_chunk_on_the_threads():
    """The byte policy off: every call with more than one chunk spreads over torch's threads
    (what bench/thread_crossover.py times as "2 threads")."""
    from fused_optim import _cpu as cpu

    cpu.set_bytes_per_thread(1, 1)
    yield
    cpu.set_bytes_per_thread(cpu.default_quiet_bytes_per_thread, cpu.default_busy_bytes_per_thread)
