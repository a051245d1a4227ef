"""A busy machine on demand: one process per core spinning in pure Python, as other jobs keep
a shared host busy. Under it, every OpenMP parallel region waits for its descheduled workers,
so timings taken under BusyLoad show what a step costs on a loaded machine, and ratios
against torch.optim taken in the same run compare both under the same load.

    with BusyLoad() as load:      # load.pids: the spinning processes
        ...                       # they stop when the block ends, Ctrl-C included

The spinners ignore SIGINT (the parent decides when they stop) and exit by themselves once
their parent is gone, so a parent killed by SIGKILL leaves no spinner behind.
"""
import multiprocessing
import os
import signal
from typing import List, Optional

PARENT_CHECK_SPINS = 1_000_000  # loop iterations between two looks at the parent: a few ms of spinning
STOP_WAIT_S = 5.0


def _spin(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == parent:
        for _ in range(PARENT_CHECK_SPINS):
            pass


def _context():
    """fork where there is one: the child needs nothing but _spin, and starts in milliseconds
    (spawn would import the parent's main module again)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class BusyLoad:
    """`processes` busy-loop processes (default: one per logical CPU) from __enter__ (or
    start()) to __exit__ (or stop())."""

    def __init__(self, processes: Optional[int] = None):
        self.processes = processes or os.cpu_count() or 1
        self._procs: List[multiprocessing.Process] = []

    @property
    def pids(self) -> List[int]:
        return [p.pid for p in self._procs]

    def start(self) -> "BusyLoad":
        context = _context()
        try:
            for _ in range(self.processes):
                proc = context.Process(target=_spin, args=(os.getpid(),), daemon=True, name="bench-busy-loop")
                proc.start()
                self._procs.append(proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(STOP_WAIT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs = []

    def __enter__(self) -> "BusyLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
