"""Interleaved timing of a group's implementations and the bandwidth yardstick.

The memory bandwidth of a shared host drifts by tens of percent within a minute; timing rows
one after another turns that drift into differences between implementations (Adam and AdamW,
the same native kernel, can measure 16 and 28 ms in two consecutive rows). So a group is timed
in rounds of one call of each implementation and of the yardstick: the same drift hits every
row, and their ratios and % of the yardstick hold.

On a GPU a sample is a burst of GPU_BURST back-to-back calls, as in training, where the host
queues the next step while the device runs this one: timing single calls from an idle GPU
would put the host's per-step work before the first kernel inside every sample (a large share
of a many-tensor step: bench/NOTES.md). The burst starts behind a short device-side sleep, so
the host has queued the first call when the start event fires. Where the host is slower than
the device, the burst runs at the host's rate, which is then the honest steady-state rate. The
host's own time per call is kept beside it (host_median_s).
"""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

WARMUP = 1  # untimed calls here, after the one each implementation made when it was built (which
# allocated its state: first-touch page faults), so the timed ones run warm
MIN_REPEATS = 3
YARDSTICK = "yardstick"
GPU_BURST = 5  # calls per GPU sample
GPU_LEAD_CYCLES = 10_000_000  # the device-side sleep before a burst: milliseconds at datacenter GPU clocks


@dataclass
class Timing:
    samples_s: List[float] = field(default_factory=list)
    host_samples_s: List[float] = field(default_factory=list)  # host time per call (GPU only)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    def quartiles(self):
        if len(self.samples_s) < 2:
            return self.samples_s[0], self.samples_s[0]
        q = statistics.quantiles(self.samples_s, n=4, method="inclusive")
        return q[0], q[2]

    def done(self, repeats: int, budget_s: float) -> bool:
        # at least MIN_REPEATS; fewer than `repeats` once budget_s is spent (the slow loops)
        n = len(self.samples_s)
        return n >= repeats or (n >= MIN_REPEATS and sum(self.samples_s) > budget_s)


def _timer(device: torch.device) -> Callable[[Callable[[], object]], Tuple[float, Optional[float]]]:
    """(seconds per call, host seconds per call or None). CPU ops are synchronous, so
    perf_counter brackets one call; on a GPU, events recorded on the current stream around a
    burst of GPU_BURST calls behind a device-side sleep (module docstring), waited for at once
    (the rows are interleaved, so one burst never overlaps the next one's timing)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def cuda_time(fn):
            torch.cuda._sleep(GPU_LEAD_CYCLES)
            start.record()
            t0 = time.perf_counter()
            for _ in range(GPU_BURST):
                fn()
            host = (time.perf_counter() - t0) / GPU_BURST
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / GPU_BURST, host
        return cuda_time

    def cpu_time(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, None
    return cpu_time


def time_interleaved(calls: Dict[str, Callable[[], object]], device: torch.device, repeats: int,
                     budget_s: float, stop_at: Optional[float] = None,
                     give_up_at: Optional[float] = None,
                     before: Optional[str] = None) -> Tuple[Dict[str, Timing], bool]:
    """WARMUP more untimed calls of each, then rounds of one timed call of each (each round in
    the order of the last, turned by one) until every one is
    done (`repeats` samples, or at least MIN_REPEATS and budget_s of timed work), or until
    time.perf_counter() passes stop_at once every one has MIN_REPEATS samples, or passes
    give_up_at (then with fewer, maybe). Returns the timings and whether a time cut the rounds
    short.

    before: the name of a call (the yardstick) made, and timed, right before every other one,
    so that each of them meets the same caches: the ones the yardstick's stream left, as a
    training step meets those the forward and backward passes left. Without it a step's
    predecessor varies with the round, and a small step right after the yardstick takes several
    times longer than one after another small step; with only rotation, which call follows the
    yardstick how often depends on the order (of three calls, one follows it in two rounds of
    three and another in one), and that alone decided small steps' ratios."""
    for fn in calls.values():
        for _ in range(WARMUP):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timer = _timer(device)
    timings = {name: Timing() for name in calls}

    def timed(name: str) -> None:
        device_s, host_s = timer(calls[name])
        timings[name].samples_s.append(device_s)
        if host_s is not None:
            timings[name].host_samples_s.append(host_s)

    active = [name for name in calls if name != before]
    rounds = 0
    while active:
        # each round starts one call later, so the drift of the round's time hits every call alike
        start = rounds % len(active)
        rounds += 1
        for name in active[start:] + active[:start]:
            if before is not None:
                timed(before)
            timed(name)
        active = [name for name in active if not timings[name].done(repeats, budget_s)]
        if not active:
            break
        now = time.perf_counter()
        if give_up_at is not None and now >= give_up_at:
            return timings, True
        if stop_at is not None and now >= stop_at and all(len(t.samples_s) >= MIN_REPEATS for t in timings.values()):
            return timings, True
    return timings, False


@dataclass(frozen=True)
class Yardstick:
    """The bandwidth an optimizer step is compared with, on the same device, in the same run.
    CPU: dst.add_(src) on fp32, 12 B/element, all real: a copy_ counts 8 but moves 12 on x86,
    each store reading its line first (read-for-ownership). GPU: a
    device-to-device copy_, read + write = 8 B/element."""
    op: str
    bytes_per_element: int
    numel: int

    @staticmethod
    def for_device(device: torch.device, numel: int) -> "Yardstick":
        if device.type == "cuda":
            return Yardstick("dst.copy_(src)", 8, numel)
        return Yardstick("dst.add_(src)", 12, numel)

    def call(self, device: torch.device) -> Callable[[], object]:
        dst = torch.zeros(self.numel, device=device)
        src = torch.randn(self.numel, device=device)
        if self.op == "dst.copy_(src)":
            return lambda: dst.copy_(src)
        return lambda: dst.add_(src)

    def record(self, timing: Timing) -> Dict:
        q1, q3 = timing.quartiles()
        return {"op": self.op, "bytes_per_element": self.bytes_per_element, "numel": self.numel,
                "median_s": timing.median_s, "q1_s": q1, "q3_s": q3,
                "min_s": min(timing.samples_s), "max_s": max(timing.samples_s),
                "gbps": self.bytes_per_element * self.numel / timing.median_s / 1e9}
