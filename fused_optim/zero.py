"""ZeRO: torch's ZeroRedundancyOptimizer and DeepSpeed's ZeRO stages 1 and 2 (ZeRO-Offload
included) with fused_optim's optimizers as the client optimizer.

Under ZeRO each rank's optimizer holds only its partition of the params: a subset of whole
params (ZeroRedundancyOptimizer), or one flat fp32 slice of all of them per param group,
possibly ending in padding (DeepSpeed). Elementwise steps need nothing; a global statistic
does: Adai's mean of vhat over every element, and the total grad norm of max_grad_norm. After

    fused_optim.zero.attach(engine_or_zero_redundancy_optimizer)  # on every rank, once

the partition's sum and real element count (padding excluded) are all-reduced over the
data-parallel group with the same single collective per step as under FSDP2, so that the
step equals a 1-rank step to fp32 rounding. Without it, Adai raises when it steps inside one of
these wrappers instead of computing a per-rank mean.
"""
from typing import List, Optional, Sequence

import torch

from .optimizers._sharding import empty_part_device, register_partition, register_partitioned_optimizer
from .optimizers.base import FusedOptimizer

try:
    import torch.distributed as dist
except ImportError:  # builds without distributed
    dist = None

__all__ = ["attach", "partition"]


def attach(wrapper) -> FusedOptimizer:
    """Registers the partition of a ZeRO wrapper's client optimizer; returns that optimizer.

    wrapper: a torch.distributed.optim.ZeroRedundancyOptimizer whose optimizer_class is one of
    ours, or a DeepSpeed engine (deepspeed.initialize's first result) or its ZeRO stage 1-2
    optimizer (or its BF16_Optimizer: bf16 with stage 1 and fp32 grad accumulation), built with
    one of ours as the client optimizer. Collective: call it on every rank of the data-parallel
    group, after the wrapper is built (and again after adding a param group). Raises, before
    anything is registered, where the ranks' partitions do not add up to the model's elements
    or the wrapper is not one of those. A ZeroRedundancyOptimizer's state_dict() and
    load_state_dict() then also carry our optimizers' top-level entries (DualAdam's
    global_step), which torch's consolidation drops.
    """
    module = type(wrapper).__module__
    if type(wrapper).__name__ == "DeepSpeedEngine":
        inner = getattr(wrapper, "optimizer", None)
        if inner is None:
            raise ValueError("fused_optim.zero.attach: this DeepSpeed engine has no optimizer")
        return attach(inner)
    if _is_torch_zero(wrapper):
        return _attach_torch_zero(wrapper)
    if module.startswith("deepspeed.runtime.zero.stage_1_and_2"):
        return _attach_deepspeed(wrapper)
    if module.startswith("deepspeed.runtime.bf16_optimizer"):
        return _attach_deepspeed_bf16(wrapper)
    if module.startswith("deepspeed.runtime.zero.stage3"):
        raise ValueError("fused_optim.zero.attach: DeepSpeed ZeRO stage 3 is not supported (stages 1 and 2 are)")
    if isinstance(wrapper, FusedOptimizer):
        raise TypeError(f"fused_optim.zero.attach takes the ZeRO wrapper (a DeepSpeed engine or a "
                        f"ZeroRedundancyOptimizer), not the {type(wrapper).__name__} inside it; for another wrapper, "
                        "use fused_optim.zero.partition(optimizer, group, ...)")
    raise TypeError(f"fused_optim.zero.attach: {type(wrapper).__module__}.{type(wrapper).__name__} is not a "
                    "ZeroRedundancyOptimizer, a DeepSpeed engine or DeepSpeed's ZeRO stage 1-2 optimizer")


def partition(optimizer: FusedOptimizer, group=None, real_numels: Optional[Sequence[int]] = None,
              total_numel: Optional[int] = None) -> FusedOptimizer:
    """The general form of attach(), for another ZeRO-like wrapper: optimizer's params (in
    param-group order) are this rank's part of a model whose elements are split over group's
    ranks (None: the default group). real_numels: each param's count of real elements (the
    rest is padding with zero grads; default: all real). total_numel: the model's element
    count, checked against the sum over ranks (one all-reduce, now). Collective."""
    if dist is None or not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fused_optim.zero: torch.distributed is not initialized")
    if not isinstance(optimizer, FusedOptimizer):
        raise TypeError(f"fused_optim.zero: {type(optimizer).__name__} is not a fused_optim optimizer (torch's own "
                        "need no registration: their steps are elementwise)")
    group = dist.group.WORLD if group is None else group
    params: List[torch.Tensor] = [p for g in optimizer.param_groups for p in g["params"]]
    if real_numels is None:
        real_numels = [p.numel() for p in params]
    real_numels = [int(n) for n in real_numels]
    if len(real_numels) != len(params):
        raise ValueError(f"fused_optim.zero: {len(real_numels)} element counts for {len(params)} params")
    for p, n in zip(params, real_numels):
        if not 0 <= n <= p.numel():
            raise ValueError(f"fused_optim.zero: a param of {p.numel()} elements cannot hold {n} real ones")
    if total_numel is not None:
        total = torch.tensor([sum(real_numels)], dtype=torch.int64, device=empty_part_device(group))
        dist.all_reduce(total, group=group)
        if int(total) != int(total_numel):
            raise ValueError(f"fused_optim.zero: the ranks' partitions hold {int(total)} real elements, the model "
                             f"{int(total_numel)}: the partitions, their padding or the group are not the "
                             "ones this wrapper uses")
    for p, n in zip(params, real_numels):
        register_partition(p, group, n)
    register_partitioned_optimizer(optimizer, group)
    return optimizer


def _is_torch_zero(wrapper) -> bool:
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError:
        return False
    return isinstance(wrapper, ZeroRedundancyOptimizer)


def _attach_torch_zero(zero) -> FusedOptimizer:
    local = getattr(zero, "optim", None)
    if local is None:  # overlap_with_ddp builds it at DDP's first backward
        raise RuntimeError("fused_optim.zero.attach: this ZeroRedundancyOptimizer has not built its local optimizer "
                           "yet (overlap_with_ddp=True builds it in the first iterations): call attach after that")
    total = sum(p.numel() for g in zero.param_groups for p in g["params"])
    partition(_fused(local), zero.process_group, total_numel=total)
    _carry_top_level_state(zero)
    return local


# the keys of a state dict that ZeroRedundancyOptimizer consolidates and loads itself
_ZERO_KEYS = ("state", "param_groups")


def _carry_top_level_state(zero) -> None:
    """ZeroRedundancyOptimizer consolidates only the "state" and "param_groups" of the local
    optimizers' state dicts, and loads the states into them directly: a top-level entry of
    ours (DualAdam's "global_step") would be dropped, and the states skip our load checks. So
    this ZeroRedundancyOptimizer's state_dict() also returns the top-level entries of rank 0's
    local state dict (the ranks step in lockstep: they agree), and its load_state_dict() then
    loads the local optimizer's state dict with them through the local optimizer's own
    load_state_dict. (Set once per instance: attaching again does not wrap twice.)"""
    if getattr(zero, "_fused_optim_carries_state", False):
        return
    state_dict, load_state_dict = zero.state_dict, zero.load_state_dict

    def state_dict_with_ours():
        result = state_dict()
        local = zero._all_state_dicts[0] if zero._all_state_dicts else {}
        result.update({key: value for key, value in local.items() if key not in _ZERO_KEYS})
        return result

    def load_state_dict_with_ours(saved):
        load_state_dict(saved)
        ours = {key: value for key, value in saved.items() if key not in _ZERO_KEYS}
        local = zero.optim.state_dict()
        zero.optim.load_state_dict({**local, **ours})

    zero.state_dict, zero.load_state_dict = state_dict_with_ours, load_state_dict_with_ours
    zero._fused_optim_carries_state = True


def _attach_deepspeed(zero) -> FusedOptimizer:
    """DeepSpeed's stage 1-2 optimizer replaced each client param group's params by one flat
    fp32 slice of the group's params (single_partition_of_fp32_groups), the slices of all ranks
    together being the flat group padded to a multiple of the group's size (and with
    parameter_alignment, each param padded): the real elements of this rank's slice are
    counted from the same layout DeepSpeed partitions by (get_partition_info)."""
    local = _fused(zero.optimizer)
    group_of_ranks = _one_group(zero.real_dp_process_group)
    real, total = [], 0
    for i, group in enumerate(local.param_groups):
        flat = _flat_partition(group, zero.single_partition_of_fp32_groups[i], i)
        rank = dist.get_rank(group=group_of_ranks)
        size = zero.partition_size[i]
        start, end = rank * size, (rank + 1) * size
        here, position = 0, 0
        for p, padding in zip(zero.round_robin_bit16_groups[i], zero.round_robin_bit16_padding[i]):
            here += max(0, min(end, position + p.numel()) - max(start, position))
            position += p.numel() + padding
            total += p.numel()
        if here > flat.numel():
            raise RuntimeError(f"fused_optim.zero.attach: DeepSpeed's layout of param group {i} is not the one "
                               f"expected ({here} real elements in a partition of {flat.numel()})")
        real.append(here)
    return partition(local, group_of_ranks, real, total_numel=total)


def _attach_deepspeed_bf16(zero) -> FusedOptimizer:
    """DeepSpeed's BF16_Optimizer (bf16 with stage 1 and fp32 grad accumulation): per param
    group one flat fp32 slice (fp32_groups_flat_partition) of the group's params laid end to
    end, the padding at the end of the flat group."""
    local = _fused(zero.optimizer)
    groups = _one_group(zero.real_dp_process_group)
    real, total = [], 0
    for i, group in enumerate(local.param_groups):
        flat = _flat_partition(group, zero.fp32_groups_flat_partition[i], i)
        start = dist.get_rank(group=groups) * flat.numel()
        length = sum(p.numel() for p in zero.bf16_groups[i])
        real.append(max(0, min(start + flat.numel(), length) - start))
        total += length
    return partition(local, groups, real, total_numel=total)


def _one_group(process_groups):
    groups = [dist.group.WORLD if g is None else g for g in process_groups]
    if any(g is not groups[0] for g in groups):
        raise ValueError("fused_optim.zero.attach: param groups partitioned over different process groups "
                         "(DeepSpeed's MoE expert groups) are not supported")
    return groups[0]


def _flat_partition(group, flat, i):
    if len(group["params"]) != 1 or group["params"][0] is not flat:
        raise RuntimeError(f"fused_optim.zero.attach: param group {i} of the client optimizer is not DeepSpeed's "
                           "flat partition")
    return flat


def _fused(optimizer) -> FusedOptimizer:
    if not isinstance(optimizer, FusedOptimizer):
        raise TypeError(f"fused_optim.zero.attach: the client optimizer is a {type(optimizer).__name__}, not a "
                        "fused_optim optimizer")
    return optimizer
