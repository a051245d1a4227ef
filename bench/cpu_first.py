"""The first CPU benchmark: what is measured, on which cases, and how it is timed.

Every optimizer runs on every case with each implementation (our "cpu" and "torch" backends,
the authors'-style per-tensor loop, torch.optim's fused and foreach Adam/AdamW as peers) in
ONE process. The implementations of one optimizer and an in-place read-modify-write
bandwidth yardstick are timed interleaved, step by step, so their ratios come from the same
moments of the same machine.
"""
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

import fused_optim
from fused_optim.reference import authors
from fused_optim.registry import OPTIMIZERS as OPTIMIZER_TABLE

# implementations, in the order of the rows (and of the timed calls in each round)
IMPLS = ("cpu", "torch", "authors", "fused", "foreach")
PEERS = ("fused", "foreach")  # torch.optim's own implementations
WARMUP = 2  # step 1 allocates the state (first-touch page faults); step 2 runs warm
MIN_REPEATS = 3
ROW_BUDGET_S = 4.0  # stop timing a row after this much timed work (the slow per-tensor loops)
YARDSTICK = "yardstick"  # its key among a group's timings
YARDSTICK_BYTES = 12  # dst.add_(src): read dst, read src, write dst


@dataclass(frozen=True)
class OptimizerCase:
    name: str
    ours: Callable  # fused_optim class
    kwargs: Dict  # hyperparameters, identical for every implementation of the row
    authors: Optional[Callable] = None
    peer: Optional[Callable] = None  # torch.optim class measured fused/foreach in this group

    @property
    def bytes_moved(self) -> int:
        """Bytes per fp32 element our native design moves (registry; csrc/cpu/<opt>.cpp)."""
        return OPTIMIZER_TABLE[self.name].bytes_moved_cpu

    @property
    def bytes_min(self) -> int:
        """Bytes per fp32 element any design must move."""
        return OPTIMIZER_TABLE[self.name].bytes_per_element


# Benchmarked with decoupled or zero weight decay: Adai's coupled L2 also reads p in pass 1.
OPTIMIZERS = (
    OptimizerCase("AdamW", fused_optim.AdamW, {}, peer=torch.optim.AdamW),
    OptimizerCase("Adam", fused_optim.Adam, {}, peer=torch.optim.Adam),
    OptimizerCase("Adai", fused_optim.Adai, dict(lr=0.1), authors.AuthorsAdai),
    OptimizerCase("AdaiW", fused_optim.AdaiW, dict(lr=0.1, weight_decay=5e-4), authors.AuthorsAdaiW),
    OptimizerCase("AdaMomentum", fused_optim.AdaMomentum, {}, authors.AuthorsAdaMomentum),
    OptimizerCase("InvAdam", fused_optim.InvAdam, {}, authors.AuthorsInvAdam),
    OptimizerCase("DualAdam", fused_optim.DualAdam, {}, authors.AuthorsDualAdam),
)
BY_NAME = {o.name: o for o in OPTIMIZERS}
# every optimizer's ratios refer to torch.optim.AdamW (Adam's to torch.optim.Adam)
RATIO_PEER = "AdamW"


def llama_like_shapes(d: int, layers: int = 3) -> List[Tuple[int, ...]]:
    """Decoder-like shapes, 48 d^2 elements: embedding [12d, d], per layer q/k/v/o [d, d],
    up [4d, d], down [d, 4d] and two norms [d], a final norm. d = 1024 gives 50.3M."""
    shapes = [(12 * d, d)]
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(4 * d, d), (d, 4 * d), (d,), (d,)]
    return shapes + [(d,)]


def many_tensor_shapes(rows: int) -> List[Tuple[int, ...]]:
    """64 tensors of two sizes; rows = 256 gives 12.6M elements. Per-tensor loops pay their
    python and launch overhead 64 times here."""
    return [(rows, 1024), (rows // 2, 1024)] * 32


def cases(quick: bool) -> List[Tuple[str, List[Tuple[int, ...]]]]:
    # --quick: about 1/10 of the elements (4.9M and 1.3M), a smoke run: they may partly sit in the cache
    if quick:
        return [("5M list", llama_like_shapes(320)), ("64 tensors ~1.2M", many_tensor_shapes(26))]
    return [("50M list", llama_like_shapes(1024)), ("64 tensors ~12M", many_tensor_shapes(256))]


@dataclass
class Timing:
    samples_s: List[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    def done(self, repeats: int) -> bool:
        # at least MIN_REPEATS; fewer than `repeats` once ROW_BUDGET_S is spent (slow loops)
        n = len(self.samples_s)
        return n >= repeats or (n >= MIN_REPEATS and sum(self.samples_s) > ROW_BUDGET_S)


def time_interleaved(calls: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, Timing]:
    """WARMUP untimed calls of each, then rounds of one timed call of each until every one is
    done. The memory bandwidth of a shared host drifts by tens of percent within a minute;
    interleaving puts the same drift on every implementation of a group, so their ratios and
    their % of the yardstick (itself one of the calls) hold. CPU ops are synchronous, so
    perf_counter brackets the work."""
    for fn in calls.values():
        for _ in range(WARMUP):
            fn()
    timings = {name: Timing() for name in calls}
    active = list(calls)
    while active:
        for name in active:
            start = time.perf_counter()
            calls[name]()
            timings[name].samples_s.append(time.perf_counter() - start)
        active = [name for name in active if not timings[name].done(repeats)]
    return timings


class Workload:
    """Initial fp32 param values and fixed random grads, set once. Each implementation gets
    its own params starting from the same values, sharing the (read-only) grads."""

    def __init__(self, shapes: List[Tuple[int, ...]], seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.initial = [torch.randn(s, generator=gen) for s in shapes]
        self.grads = [torch.randn(s, generator=gen) * 1e-2 for s in shapes]
        self.numel = sum(t.numel() for t in self.initial)

    def params(self) -> List[torch.Tensor]:
        params = [t.clone() for t in self.initial]
        for p, g in zip(params, self.grads):
            p.grad = g
        return params


def make_optimizer(case: OptimizerCase, impl: str, params) -> torch.optim.Optimizer:
    if impl in ("cpu", "torch"):
        return case.ours(params, backend=impl, **case.kwargs)
    if impl == "authors":
        return case.authors(params, **case.kwargs)
    return case.peer(params, **{impl: True}, **case.kwargs)


def has_impl(case: OptimizerCase, impl: str) -> bool:
    if impl == "authors":
        return case.authors is not None
    if impl in PEERS:
        return case.peer is not None
    return True


def plan(optimizers: List[str], impls: List[str]) -> List[Tuple[OptimizerCase, List[str]]]:
    """The groups to measure per case: (optimizer, its implementations). The AdamW peers are
    always measured when asked for, since every optimizer's ratios refer to them."""
    names = list(optimizers)
    if RATIO_PEER not in names and any(i in impls for i in PEERS):
        names.insert(0, RATIO_PEER)
    groups = []
    for name in names:
        case = BY_NAME[name]
        chosen = [i for i in IMPLS if i in impls and has_impl(case, i) and (name in optimizers or i in PEERS)]
        if chosen:
            groups.append((case, chosen))
    return groups


def measure_group(case: OptimizerCase, impls: List[str], workload: Workload, repeats: int) -> Dict[str, Timing]:
    """Timings of one optimizer's implementations and of the yardstick, interleaved. The
    yardstick is dst.add_(src) over fp32 tensors of the case's size: 12 real B/element; a
    copy_ would count 8 while moving 12 (the store's read-for-ownership)."""
    dst = torch.zeros(workload.numel)
    src = torch.randn(workload.numel)
    calls = {YARDSTICK: lambda: dst.add_(src)}
    for impl in impls:
        calls[impl] = make_optimizer(case, impl, workload.params()).step
    timings = time_interleaved(calls, repeats)
    del calls, dst, src
    gc.collect()  # free this group's params and states before the next group allocates its own
    return timings
