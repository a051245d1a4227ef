"""Where one optimizer step's time goes: `python -m bench.profile_step [--optimizer AdamW]
[--tensors 2000] [--backend cpu]`.

Steps an optimizer over the benchmark's small-tensor case (bench/cases.py: 1-4K elements per
tensor), prints the median time per step unprofiled next to torch.optim.AdamW(fused=True) on the
same tensors, then the functions that take the most of a step under cProfile, per step. The
profile inflates Python calls (each call pays the profiler's hook), so read its shares, not
its absolute times.
"""
import argparse
import cProfile
import pstats
import statistics
import time
from typing import List, Optional

import torch

import fused_optim

from .cases import small_shapes


def _params(count: int, seed: int = 0) -> List[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in small_shapes(count)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def median_step_ms(optimizer, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizer", default="AdamW", help="a fused_optim class name (default AdamW)")
    parser.add_argument("--tensors", type=int, default=2000, help="how many small tensors (default 2000)")
    parser.add_argument("--backend", default="cpu", help="the backend (default cpu)")
    parser.add_argument("--steps", type=int, default=30, help="timed and profiled steps (default 30)")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    args = parser.parse_args(argv)

    ours = getattr(fused_optim, args.optimizer)(_params(args.tensors), lr=1e-3, backend=args.backend)
    peer = torch.optim.AdamW(_params(args.tensors), lr=1e-3, fused=True)
    for optimizer in (ours, peer):
        for _ in range(3):  # states made, plans prepared
            optimizer.step()
    ours_ms, peer_ms = median_step_ms(ours, args.steps), median_step_ms(peer, args.steps)
    print(f"{args.optimizer} ({args.backend}), {args.tensors} tensors: {ours_ms:.2f} ms per step; "
          f"torch.optim.AdamW(fused=True) {peer_ms:.2f} ms ({peer_ms / ours_ms:.2f}x ours)")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        ours.step()
    profile.disable()
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])[: args.top]
    print(f"\n{'per step (profiled)':>20}  {'self':>9}  function")
    for (path, line, name), (_, calls, own, cumulative, _) in rows:
        where = f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{line}" if "/" in path else path
        print(f"{1e6 * cumulative / args.steps:>17.0f} us  {1e6 * own / args.steps:>6.0f} us  {name} ({where}, "
              f"{calls // args.steps} calls)")


if __name__ == "__main__":
    main()
