"""python -m bench.thread_crossover: from what size a second thread pays for one AdamW step of
the cpu backend, on the machine as found ("idle") and with one busy-loop process per core
(bench/load.py, "loaded"); then the small steps the byte policy is for, before and after it.
csrc/cpu/driver.h's kQuietBytesPerThread and kBusyBytesPerThread come from it (bench/NOTES.md
has the numbers).

The sweep times each size as one tensor and as tensors of SMALL_TENSOR elements, with:
  1 thread     torch.set_num_threads(1)
  2 threads    torch.set_num_threads(2), the byte policy off (set_bytes_per_thread(1, 1)): every
               call with more than one chunk runs on 2 threads, as before the policy
  policy       torch.set_num_threads(2) with the module's default bytes_per_thread
  fused        torch.optim.AdamW(fused=True) on 2 threads, the peer the policy must not lose to
The small steps (AdamW on 8 tensors of 20 elements, Adai on nn.Linear(20, 1)'s params) are
timed with "2 threads" (before the policy), "policy" (after) and "fused".
The configurations take turns within each round, so the load's drift hits them alike; a sample
is the mean step time of a burst of steps lasting at least SAMPLE_S, and a cell is the median of
the rounds' samples. Sizes are counted as the policy counts them: elements x 16 bytes (fp32
params, grads, exp_avg, exp_avg_sq).
"""
import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch

import fused_optim
from fused_optim import _cpu

from .load import BusyLoad
from .report import OtherLoad

SIZES = [1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 21, 1 << 22]  # 4K .. 4M elements
SMALL_TENSOR = 1024
BYTES_PER_ELEMENT = 16
SAMPLE_S = 0.02
MAX_BURST = 200
LAYOUTS = ("one", "many")
# (torch threads, bytes_per_thread: None is the module's default) of each configuration
SETTINGS = {"1 thread": (1, None), "2 threads": (2, 1), "policy": (2, None), "fused": (2, None)}
CONFIGS = tuple(SETTINGS)
SMALL_STEPS = {"AdamW, 8 tensors of 20": ("AdamW", [[20]] * 8),
               "Adai, nn.Linear(20, 1)": ("Adai", [[1, 20], [1]])}


def _layouts(numel: int, chosen) -> Dict[str, List[int]]:
    layouts = {"one": ("one tensor", [numel]),
               "many": (f"tensors of {SMALL_TENSOR}", [SMALL_TENSOR] * max(1, numel // SMALL_TENSOR))}
    return dict(layouts[c] for c in chosen)


def _params(shapes: List[List[int]]) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen).requires_grad_() for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-2
    return params


def _apply_settings(config: str) -> None:
    threads, bytes_per_thread = SETTINGS[config]
    torch.set_num_threads(threads)
    if bytes_per_thread is None:
        _cpu.set_bytes_per_thread(_cpu.default_quiet_bytes_per_thread, _cpu.default_busy_bytes_per_thread)
    else:
        _cpu.set_bytes_per_thread(bytes_per_thread, bytes_per_thread)


def _ours(optimizer: str, shapes: List[List[int]]) -> Callable[[], None]:
    hyper = dict(lr=1e-3, weight_decay=1e-2)
    return getattr(fused_optim, optimizer)(_params(shapes), **hyper, backend="cpu").step


def _fused(shapes: List[List[int]]) -> Callable[[], None]:
    return torch.optim.AdamW(_params(shapes), lr=1e-3, weight_decay=1e-2, fused=True).step


def _steppers(optimizer: str, shapes: List[List[int]], configs) -> Dict[str, Callable[[], None]]:
    """Each configuration's step on its own params (lr 1e-3, weight decay 1e-2)."""
    return {c: _fused(shapes) if c == "fused" else _ours(optimizer, shapes) for c in configs}


def _sample(step: Callable[[], None]) -> float:
    """Seconds per step over a burst of at least SAMPLE_S (at most MAX_BURST steps)."""
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= SAMPLE_S or count >= MAX_BURST:
            return elapsed / count


def time_steps(steppers: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, float]:
    """Median seconds per step of each configuration, the configurations taking turns round
    by round (after one untimed step each: the states' first touch)."""
    samples: Dict[str, List[float]] = {c: [] for c in steppers}
    for config, step in steppers.items():
        _apply_settings(config)
        step()
    for _ in range(rounds):
        for config, step in steppers.items():
            _apply_settings(config)
            samples[config].append(_sample(step))
    return {c: statistics.median(s) for c, s in samples.items()}


def sweep(sizes: List[int], layouts, rounds: int) -> Dict[str, Dict[int, Dict[str, float]]]:
    """{layout: {elements: {config: seconds per step}}}."""
    table: Dict[str, Dict[int, Dict[str, float]]] = {}
    for numel in sizes:
        for layout, shapes in _layouts(numel, layouts).items():
            steppers = _steppers("AdamW", [[n] for n in shapes], CONFIGS)
            table.setdefault(layout, {})[numel] = time_steps(steppers, rounds)
    return table


def crossover(rows: Dict[int, Dict[str, float]]):
    """The smallest size from which on 2 threads beat 1 at every larger size of the sweep, or
    None."""
    found = None
    for numel in sorted(rows, reverse=True):
        if rows[numel]["2 threads"] < rows[numel]["1 thread"]:
            found = numel
        else:
            break
    return found


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"


def report(state: str, other_cpus: float, table) -> List[str]:
    lines = [f"\n{state} (other processes' work: {other_cpus:.2f} CPUs); ms per step, ratio = 1 thread / 2 threads",
             f"{'layout':>18} {'elements':>9} {'MB':>7} " + " ".join(f"{c:>9}" for c in CONFIGS)
             + f" {'1T/2T':>6} {'policy/fused':>12}"]
    for layout, rows in table.items():
        for numel, cells in sorted(rows.items()):
            lines.append(f"{layout:>18} {numel:>9} {numel * BYTES_PER_ELEMENT / 1e6:7.2f} "
                         + " ".join(_ms(cells[c]) for c in CONFIGS)
                         + f" {cells['1 thread'] / cells['2 threads']:6.2f} {cells['policy'] / cells['fused']:12.2f}")
        found = crossover(rows)
        where = (f"from {found} elements ({found * BYTES_PER_ELEMENT / 1e6:.2f} MB)" if found is not None
                 else "nowhere in this sweep")
        lines.append(f"{layout:>18}: 2 threads pay {where}")
    return lines


def small_steps(rounds: int) -> Dict[str, Dict[str, float]]:
    configs = ("2 threads", "policy", "fused")
    return {case: time_steps(_steppers(optimizer, shapes, configs), rounds)
            for case, (optimizer, shapes) in SMALL_STEPS.items()}


def small_report(table: Dict[str, Dict[str, float]]) -> List[str]:
    lines = [f"{'small step':>24} {'before':>9} {'after':>9} {'fused':>9}   (ms per step; before: 2 threads "
             "without the policy, after: the policy, fused: torch.optim.AdamW(fused=True))"]
    for case, cells in table.items():
        lines.append(f"{case:>24} " + " ".join(_ms(cells[c]) for c in ("2 threads", "policy", "fused")))
    return lines


def measure(state: str, sizes: List[int], layouts, rounds: int) -> List[str]:
    other = OtherLoad().start()
    table = sweep(sizes, layouts, rounds) if sizes else {}
    small = small_steps(rounds)
    return report(state, other.value(), table) + small_report(small)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.thread_crossover", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                   help="total element counts of the sweep, comma list ('': the small steps only)")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help=f"comma list of one (one tensor), many (tensors of {SMALL_TENSOR} elements)")
    p.add_argument("--loaded-only", action="store_true", help="leave out the machine as found")
    p.add_argument("--rounds", type=int, default=15, help="samples per cell (default 15)")
    args = p.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not set(layouts) <= set(LAYOUTS):
        p.error(f"--layouts: choose from {LAYOUTS}, got {args.layouts!r}")
    threads = torch.get_num_threads()
    print(f"fused_optim {fused_optim.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"default bytes_per_thread {_cpu.default_quiet_bytes_per_thread >> 10} KiB quiet, "
          f"{_cpu.default_busy_bytes_per_thread >> 10} KiB busy")
    try:
        if not args.loaded_only:
            print("\n".join(measure("idle", sizes, layouts, args.rounds)), flush=True)
        with BusyLoad() as load:
            print("\n".join(measure(f"loaded ({load.processes} busy-loop processes)", sizes, layouts, args.rounds)))
    finally:
        torch.set_num_threads(threads)
        _cpu.set_bytes_per_thread(_cpu.default_quiet_bytes_per_thread, _cpu.default_busy_bytes_per_thread)


if __name__ == "__main__":
    main()
