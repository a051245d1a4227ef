"""Params whose memory overlaps are refused when their group is added.

The kernels update every element of a batch in one pass, in parallel: two params (or two
elements of one param) at the same address would be read and written by different threads in
no fixed order, so a rerun could give other bits, and a param listed twice would take two
updates. Caught here, before the optimizer exists, rather than as a wrong result later:
- a param whose own elements overlap (a stride-0 `expand`, an `as_strided` view);
- two params that share memory (views of one storage that overlap; disjoint views of one flat
  buffer, as FSDP's flat params, are fine);
- the same tensor twice in one group (torch.optim only warns; in more than one group torch
  already raises).
A param rebound later (`p.data = other`) is not checked again.
"""
from typing import List, Tuple

import torch

from ._sharding import local


def _span(t: torch.Tensor) -> int:
    """Elements from the first to the last one the view addresses (strides are >= 0)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def overlaps_itself(t: torch.Tensor) -> bool:
    """Whether two indices of t may address one element. Exact for every layout torch makes
    by slicing, permuting, expanding or transposing (each dimension's stride clears the span
    of the smaller ones); a rarer as_strided layout that fails this test is refused too."""
    span = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s > 1), key=lambda d: d[1]):
        if stride < span:
            return True
        span += (size - 1) * stride
    return False


def _byte_range(t: torch.Tensor) -> Tuple[int, int]:
    start = t.data_ptr()
    return start, start + _span(t) * t.element_size()


def _addressable(t: torch.Tensor) -> bool:
    """Tensors with real memory: not meta (deferred init), not empty."""
    return t.device.type != "meta" and t.numel() > 0


def check_params(groups: List[List[torch.Tensor]], name: str) -> None:
    """Raises ValueError if a param overlaps itself, another param of these groups, or appears
    twice in its group. groups: the params of every param group, the newest last."""
    newest = groups[-1]
    seen = {}
    for i, p in enumerate(newest):
        if id(p) in seen:
            raise ValueError(f"{name}: the same parameter is listed twice in one param group (positions "
                             f"{seen[id(p)]} and {i}); it would be updated twice per step. List each parameter once "
                             "(torch.optim warns here; a fused step cannot apply two updates to one tensor)")
        seen[id(p)] = i
        shard = local(p)
        if _addressable(shard) and overlaps_itself(shard):
            raise ValueError(f"{name}: parameter {i} of the new param group (shape {tuple(p.shape)}, strides "
                             f"{tuple(shard.stride())}) has elements that share memory, as an expand() view does; "
                             "its updates would race. Make it a tensor of its own (.clone()) before optimizing it")
    spans = []
    for g, params in enumerate(groups):
        for i, p in enumerate(params):
            shard = local(p)
            if _addressable(shard):
                spans.append((*_byte_range(shard), g, i, tuple(p.shape)))
    spans.sort()
    for (start, end, g, i, shape), (next_start, _, h, j, next_shape) in zip(spans, spans[1:]):
        if next_start < end:
            raise ValueError(f"{name}: parameter {i} of param group {g} (shape {shape}) and parameter {j} of param "
                             f"group {h} (shape {next_shape}) share memory; their updates would overwrite each "
                             "other. Give each parameter memory of its own")
