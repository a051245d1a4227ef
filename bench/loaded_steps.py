"""python -m bench.loaded_steps: is a step on up to 1M elements ever slower than torch's fused
AdamW when other work keeps every core busy? Our step with the cpu backend as it ships (the
byte policy of csrc/cpu/driver.h, nothing forced) and torch.optim.AdamW(fused=True) on the
same tensors, under one busy-loop process per core (bench/load.py), taking turns burst by burst.

On a loaded machine a step's time is bimodal: most steps get their cores, some wait a scheduler
slice (milliseconds) for a thread that lost its core. So every step is timed, not bursts, and
the report gives per case the mean step (what a training run's time is made of: the ratio of
means is the verdict), the median and the 90th percentile, and the share of steps that waited
over 3 ms. Without a forced "2 threads" configuration taking turns with it (as in
bench/thread_crossover.py), the policy's busy mark comes from its own waits only.
"""
import argparse
import json
import math
import statistics
import time
from typing import Callable, Dict, List

import torch

import fused_optim

from .load import BusyLoad
from .report import OtherLoad
from .thread_crossover import _fused, _ours

# (optimizer of ours, param shapes): AdamW on one tensor up to 1M elements, then the small steps
CASES = {
    "AdamW, one tensor of 4K": ("AdamW", [[1 << 12]]),
    "AdamW, one tensor of 64K": ("AdamW", [[1 << 16]]),
    "AdamW, one tensor of 256K": ("AdamW", [[1 << 18]]),
    "AdamW, one tensor of 1M": ("AdamW", [[1 << 20]]),
    "AdamW, 1024 tensors of 1K": ("AdamW", [[1 << 10]] * 1024),
    "AdamW, 8 tensors of 20": ("AdamW", [[20]] * 8),
    "Adai, nn.Linear(20, 1)": ("Adai", [[1, 20], [1]]),
    "Adai, one tensor of 1M": ("Adai", [[1 << 20]]),
}
BURST_S = 0.01
STALL_S = 3e-3


def _burst(step: Callable[[], None], into: List[float]) -> None:
    """Steps for at least BURST_S, each one timed."""
    start = time.perf_counter()
    while True:
        before = time.perf_counter()
        step()
        after = time.perf_counter()
        into.append(after - before)
        if after - start >= BURST_S:
            return


def _stats(times: List[float]) -> Dict[str, float]:
    ordered = sorted(times)
    # the 90th percentile by nearest rank: a step time that was measured, never below the median
    p90 = ordered[math.ceil(0.9 * len(ordered)) - 1]
    return dict(mean=statistics.fmean(ordered), median=statistics.median(ordered), p90=p90,
                stalled=sum(t > STALL_S for t in ordered) / len(ordered), steps=len(ordered))


def measure(rounds: int) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{case: {"ours" | "fused": stats}}, the two taking turns burst by burst."""
    results = {}
    for case, (optimizer, shapes) in CASES.items():
        steppers = {"ours": _ours(optimizer, shapes), "fused": _fused(shapes)}
        times: Dict[str, List[float]] = {name: [] for name in steppers}
        for step in steppers.values():
            step()  # the states' first touch
        for _ in range(rounds):
            for name, step in steppers.items():
                _burst(step, times[name])
        results[case] = {name: _stats(t) for name, t in times.items()}
    return results


def report(results, other_cpus: float) -> List[str]:
    lines = [f"other processes' work: {other_cpus:.2f} CPUs; ms per step (ours | torch fused); "
             "ratio = torch fused's mean / ours (> 1: ours is faster)",
             f"{'case':>28} {'mean':>15} {'median':>15} {'p90':>15} {'>3 ms':>13} {'ratio':>6}"]
    for case, rows in results.items():
        ours, fused = rows["ours"], rows["fused"]
        cells = [f"{1e3 * ours[k]:6.3f} | {1e3 * fused[k]:6.3f}" for k in ("mean", "median", "p90")]
        lines.append(f"{case:>28} " + " ".join(f"{c:>15}" for c in cells)
                     + f" {ours['stalled']:5.0%} | {fused['stalled']:4.0%} {fused['mean'] / ours['mean']:6.2f}")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loaded_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40, help="bursts of each side per case (default 40)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    print(f"fused_optim {fused_optim.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          "one busy-loop process per core")
    with BusyLoad():
        other = OtherLoad().start()
        results = measure(args.rounds)
        other_cpus = other.value()
    print("\n".join(report(results, other_cpus)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), other_cpus=other_cpus,
                           burst_s=BURST_S, rounds=args.rounds, results=results), f, indent=1)


if __name__ == "__main__":
    main()
