"""Sharded parameters (FSDP2's fully_shard: DTensor params and grads).

The kernels update each rank's local shard; states are created like their param (DTensors
sharded the same way, as torch.optim's are, so distributed checkpoints treat them alike).
Only a global reduction needs the other ranks: Adai's mean of vhat over every element of
every param, which global_mean() completes with one all-reduce per step, the total grad
norm of max_grad_norm, which global_norm() completes likewise, and for a clipped Adai step
both at once (global_clip_sums(): still one collective).

ZeRO (torch's ZeroRedundancyOptimizer, DeepSpeed stages 1-2) hands the optimizer plain tensors
instead: whole params or one flat slice of them, possibly ending in padding. Nothing on such a
tensor says it is a part, so fused_optim.zero registers each with its group and its count of
real elements (register_partition); shard_group() and element_count() then treat it as a shard.
"""
import math
import sys
from typing import Dict, List, Optional, Tuple

import torch
import weakref

try:
    import torch.distributed as dist
except ImportError:  # builds without distributed
    dist = None


# the types most tensors have: tested first, a step asks this several times per param
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _dtensor_module():
    """torch's DTensor module if it is loaded, else None. Not imported here: it takes ~2 s, and
    a process that holds a DTensor has loaded it already (torch < 2.5 keeps it private)."""
    return sys.modules.get("torch.distributed.tensor") or sys.modules.get("torch.distributed._tensor")


def is_distributed_tensor(t: torch.Tensor) -> bool:
    if type(t) in _PLAIN:
        return False
    module = _dtensor_module()
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds: the local shard of a DTensor, else the tensor.
    (Called several times per param and step: the common case returns after one test.)"""
    if type(t) in _PLAIN:
        return t
    return t.to_local() if is_distributed_tensor(t) else t


# id(tensor) -> (weak reference, group, real elements) of the ZeRO partitions fused_optim.zero
# registered: a plain dict, as _collect looks each param up on every step (torch's
# WeakIdKeyDictionary costs ~4 us a lookup); an entry goes when its tensor dies. Nothing is
# set on the tensor itself: an attribute would be pickled with it into checkpoints, and a
# process group cannot be.
_PARTITIONS: Dict[int, tuple] = {}
# id(optimizer) -> (weak reference, group) of optimizers whose params are a ZeRO partition: a
# rank with no grad this step still takes part in the collective (else the others would wait)
_PARTITIONED_OPTIMIZERS: Dict[int, tuple] = {}


def _remember(table: Dict[int, tuple], obj, *values) -> None:
    key = id(obj)

    def forget(ref, key=key):
        if table.get(key, (None,))[0] is ref:
            del table[key]

    table[key] = (weakref.ref(obj, forget), *values)


def _lookup(table: Dict[int, tuple], obj):
    entry = table.get(id(obj))
    return entry if entry is not None and entry[0]() is obj else None


def register_partition(t: torch.Tensor, group, numel: int) -> None:
    """t is this rank's part of a set of elements split over group's ranks, numel of its elements
    real (the rest: padding, whose grads are zero and which count in no mean)."""
    if not 0 <= numel <= t.numel():
        raise ValueError(f"a partition of {t.numel()} elements cannot hold {numel} real ones")
    _remember(_PARTITIONS, t, group, int(numel))


def register_partitioned_optimizer(optimizer, group) -> None:
    _remember(_PARTITIONED_OPTIMIZERS, optimizer, group)


def partitions_registered() -> bool:
    """Whether any ZeRO partition is registered in this process: a param's shard group can then
    change when fused_optim.zero.attach runs, so no step plan (_step_plan.py) is made or used."""
    return bool(_PARTITIONS) or bool(_PARTITIONED_OPTIMIZERS)


def partition_group(optimizer):
    """The group an optimizer's params are a ZeRO partition over (fused_optim.zero), or None."""
    entry = _lookup(_PARTITIONED_OPTIMIZERS, optimizer) if _PARTITIONED_OPTIMIZERS else None
    return None if entry is None else entry[1]


def element_count(params, tensors) -> int:
    """The real elements of a batch: its tensors' sizes, less the padding of ZeRO partitions."""
    if not _PARTITIONS:
        return sum(t.numel() for t in tensors)
    total = 0
    for p, t in zip(params, tensors):
        entry = _lookup(_PARTITIONS, p)
        total += t.numel() if entry is None else entry[2]
    return total


# the modules whose ZeRO wrappers call a client optimizer's step() with a partition for params
_ZERO_CALLERS = {
    "torch.distributed.optim.zero_redundancy_optimizer": "torch's ZeroRedundancyOptimizer",
    "deepspeed.runtime.zero.stage_1_and_2": "DeepSpeed's ZeRO (stage 1 or 2)",
    "deepspeed.runtime.bf16_optimizer": "DeepSpeed's BF16_Optimizer",
    "deepspeed.runtime.zero.stage3": "DeepSpeed's ZeRO stage 3",
}


def zero_caller() -> Optional[str]:
    """The ZeRO wrapper this step runs inside (a look up the stack, only once one of them is
    loaded), or None."""
    if not any(name in sys.modules for name in _ZERO_CALLERS):
        return None
    frame = sys._getframe(1)
    for _ in range(24):
        if frame is None:
            return None
        wrapper = _ZERO_CALLERS.get(frame.f_globals.get("__name__"))
        if wrapper is not None:
            return wrapper
        frame = frame.f_back
    return None


def empty_part_device(group) -> torch.device:
    """Where a rank without grads puts its zeros for a collective of group: NCCL needs them on
    this rank's GPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_group(p: torch.Tensor):
    """The process group over whose ranks p's elements are split, or None when every rank
    holds all of them (a plain tensor, DDP's replicas, a Replicate DTensor). A registered
    ZeRO partition's group is its own."""
    if not is_distributed_tensor(p):
        if _PARTITIONS:
            entry = _lookup(_PARTITIONS, p)
            return None if entry is None else entry[1]
        return None
    shard = _dtensor_module().Shard
    dims = [i for i, placement in enumerate(p.placements) if isinstance(placement, shard)]
    if not dims:
        return None
    if len(dims) > 1:
        raise ValueError(
            f"a parameter sharded over {len(dims)} mesh dimensions ({p.placements}); fused_optim supports "
            "sharding over one (FSDP, or HSDP's shard dimension)"
        )
    return p.device_mesh.get_group(dims[0])


def global_mean(parts: List[Tuple[object, torch.Tensor, int]]) -> torch.Tensor:
    """Mean over all elements from (shard group, local sum, local element count) parts.

    Sums of sharded params are all-reduced over their group together with their element
    counts (one collective per group: a 2-element fp64 tensor); replicated params count once
    as they are. Without sharded params nothing is communicated.
    """
    total: Optional[torch.Tensor] = None
    count = 0
    sharded: Dict[object, List] = {}
    for group, part, n in parts:
        if group is None:
            total = part if total is None else total + part.to(total.device)
            count += n
        else:
            entry = sharded.setdefault(group, [None, 0])
            entry[0] = part if entry[0] is None else entry[0] + part.to(entry[0].device)
            entry[1] += n
    for group, (part, n) in sharded.items():
        both = torch.stack([part, torch.tensor(float(n), dtype=torch.float64, device=part.device)])
        dist.all_reduce(both, group=group)
        total = both[0] if total is None else total + both[0].to(total.device)
        count = count + both[1].to(total.device)
    return total / count if not (isinstance(count, int) and count == 0) else total


def global_norm(parts: List[Tuple[object, torch.Tensor]], norm_type: float) -> torch.Tensor:
    """The norm of order norm_type over all elements, from (shard group, local norm) parts.

    A local norm of a sharded batch covers this rank's shard only: the shards' sums of
    |g|^norm_type (their maximum for the inf norm) are all-reduced over their group (one
    collective per group, in fp64), replicated batches count once as they are. The result
    has the local norms' dtype and device. Without sharded parts nothing is communicated.
    """
    first = parts[0][1]
    if not any(group is not None for group, _ in parts):
        return torch.linalg.vector_norm(torch.stack([n.to(first.device) for _, n in parts]), norm_type)
    infinite = math.isinf(norm_type)
    by_group: Dict[object, List[torch.Tensor]] = {}
    for group, norm in parts:
        by_group.setdefault(group, []).append(norm.to(first.device, torch.float64))
    combined = []
    for group, norms in by_group.items():
        stacked = torch.stack(norms)
        part = stacked.max() if infinite else stacked.pow(norm_type).sum()
        if group is not None:
            part = part.clone()
            dist.all_reduce(part, op=dist.ReduceOp.MAX if infinite else dist.ReduceOp.SUM, group=group)
        combined.append(part)
    stacked = torch.stack(combined)
    total = stacked.max() if infinite else stacked.sum().pow(1.0 / norm_type)
    return total.to(first.dtype)


def global_clip_sums(parts: List[Tuple[object, torch.Tensor, int]], norm_type: float):
    """Totals of Adai's clip sums (backends.adai_clip_sums: [norm part, c0, c1, c2]) over all
    elements, and the element count, from (shard group, local sums, local element count)
    parts: (4-element fp64 tensor, count). count is an int unless params are sharded (then a
    tensor on the device), so an unsharded step copies nothing from the host (CUDA graphs).

    Parts of sharded params travel with their counts in ONE collective per shard group: the
    norm and the mean of a clipped step do not need two. That is an all-reduce, except for the
    inf norms, whose part is a max (min for -inf) that cannot share a sum's all-reduce: their
    rows are all-gathered and combined here in rank order. Replicated params count once.
    """
    infinite = math.isinf(norm_type)

    def add(a: Optional[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
        """a + b, except that the norm parts of inf norms combine by max (min for -inf)."""
        if a is None:
            return b
        b = b.to(a.device)
        if not infinite:
            return a + b
        first = torch.maximum(a[:1], b[:1]) if norm_type > 0 else torch.minimum(a[:1], b[:1])
        return torch.cat([first, a[1:] + b[1:]])

    total: Optional[torch.Tensor] = None
    count = 0
    sharded: Dict[object, torch.Tensor] = {}
    for group, sums, n in parts:
        if group is None:
            total = add(total, sums)
            count += n
        else:  # the count rides in the row's last place (a sum in either collective)
            row = torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64, device=sums.device)])
            sharded[group] = add(sharded.get(group), row)
    for group, row in sharded.items():
        if infinite:
            gathered = [torch.empty_like(row) for _ in range(dist.get_world_size(group))]
            dist.all_gather(gathered, row, group=group)
            row = gathered[0]
            for other in gathered[1:]:
                row = add(row, other)
        else:
            row = row.clone()
            dist.all_reduce(row, group=group)
        total = add(total, row[:4])
        count = count + row[4].to(total.device)
    return total, count
