"""The benchmark's cases and how they are sized to the device.

Four families, each a list of parameter shapes:
- large: one tensor, a size sweep (bandwidth-bound, no per-tensor overhead);
- llama: the tensor list of LLaMA-7B (d=4096, f=11008, V=32000, 32 layers) with its width
  divided by a scale factor and fewer layers, so every shape ratio stays the model's;
- small: many tensors of 1-4K elements, the launch/overhead-bound regime;
- resnet: the 161 conv/bn/fc tensors of ResNet-50 (25.6M elements), channels divided by a
  width factor on small machines (161 tensors either way).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .names import FAMILIES

Shape = Tuple[int, ...]

LLAMA_7B = dict(d=4096, f=11008, vocab=32000, layers=32)


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    shapes: Tuple[Shape, ...]
    note: str

    @property
    def numel(self) -> int:
        return sum(_numel(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def llama_shapes(scale: int, layers: int) -> List[Shape]:
    """Embedding [V, d]; per layer q, k, v, o [d, d], gate and up [f, d], down [d, f], the
    attention and MLP norms [d]; the final norm [d] and lm_head [V, d]. Dimensions / scale."""
    d, f, vocab = (LLAMA_7B[k] // scale for k in ("d", "f", "vocab"))
    shapes: List[Shape] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d, d)] * 4 + [(f, d), (f, d), (d, f), (d,), (d,)]
    return shapes + [(d,), (vocab, d)]


def llama_layer_numel(scale: int) -> Tuple[int, int]:
    """(elements per layer, elements outside the layers) at this scale."""
    d, f, vocab = (LLAMA_7B[k] // scale for k in ("d", "f", "vocab"))
    return 4 * d * d + 3 * f * d + 2 * d, 2 * vocab * d + d


def small_shapes(count: int) -> List[Shape]:
    """`count` 1-D tensors of 1024-4096 elements (a fixed pseudo-random mix, mean ~2.5K)."""
    return [(1024 + (i * 7919) % 3073,) for i in range(count)]


def resnet50_shapes(width_div: int = 1) -> List[Shape]:
    """torchvision's resnet50 parameters in order (161 tensors, 25,557,032 elements at
    width_div 1): conv1 + bn1, the bottleneck layers [3, 4, 6, 3] (conv 1x1, 3x3, 1x1, each
    with a bn weight and bias; a 1x1 downsample conv + bn in each layer's first block), fc."""
    def ch(c):
        return max(1, c // width_div)

    shapes: List[Shape] = [(ch(64), 3, 7, 7), (ch(64),), (ch(64),)]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(ch(planes), ch(inplanes), 1, 1), (ch(planes),), (ch(planes),),
                       (ch(planes), ch(planes), 3, 3), (ch(planes),), (ch(planes),),
                       (ch(planes * 4), ch(planes), 1, 1), (ch(planes * 4),), (ch(planes * 4),)]
            if b == 0:
                shapes += [(ch(planes * 4), ch(inplanes), 1, 1), (ch(planes * 4),), (ch(planes * 4),)]
            inplanes = planes * 4
    return shapes + [(1000, ch(2048)), (1000,)]


def _mega(n: int) -> str:
    for shift, unit in ((30, "G"), (20, "M"), (10, "K")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n:,}"


def _sizes_for(device: torch.device, quick: bool, max_numel: int) -> List[int]:
    if device.type == "cpu":
        sizes = [1 << 16, 1 << 18] if quick else [1 << 20, 1 << 22, 1 << 24]
    else:
        sizes = [1 << 20, 1 << 24] if quick else [1 << 20, 1 << 24, 1 << 28, 1 << 30]
    fitting = [s for s in sizes if s <= max_numel]
    if len(fitting) < len(sizes):  # replace what does not fit by the largest power of two that does
        largest = 1 << (max(max_numel, 1 << 16).bit_length() - 1)
        if not fitting or largest > fitting[-1]:
            fitting.append(largest)
    return fitting


def build(device: torch.device, quick: bool, families: Sequence[str], max_numel: int,
          sizes: Optional[Sequence[int]] = None) -> List[Case]:
    """The cases for this device. max_numel: the most elements one case may have (from the
    free memory on a GPU; see plan.max_case_numel). CPU defaults are sized so that the whole
    plan fits the default --time-limit on 2 idle cores; GPU ones go up to 1G elements where
    memory allows."""
    cpu = device.type == "cpu"
    cases: List[Case] = []
    for family in families:
        if family == "large":
            # explicit sizes are capped to what fits (the caller notes it)
            chosen = [min(n, max_numel) for n in sizes] if sizes else _sizes_for(device, quick, max_numel)
            for n in dict.fromkeys(chosen):
                cases.append(Case(f"large {_mega(n)}", "large", ((n,),), f"one tensor of {n:,} elements"))
        elif family == "llama":
            scale = (32 if quick else 8) if cpu else (16 if quick else 2)
            target = (1 << 19 if quick else 10_500_000) if cpu else min(max_numel, 1 << 29)
            per_layer, outside = llama_layer_numel(scale)
            layers = max(1, min(LLAMA_7B["layers"], (target - outside) // per_layer))
            shapes = llama_shapes(scale, layers)
            cases.append(Case(f"llama-7b/{scale} x{layers}L", "llama", tuple(shapes),
                              f"LLaMA-7B shapes, dims / {scale}, {layers} of 32 layers"))
        elif family == "small":
            count = 200 if quick else 2000
            cases.append(Case(f"{count} small", "small", tuple(small_shapes(count)),
                              f"{count} tensors of 1-4K elements"))
        elif family == "resnet":
            div = (8 if quick else 2) if cpu else 1
            name = "resnet50" if div == 1 else f"resnet50 width/{div}"
            cases.append(Case(name, "resnet", tuple(resnet50_shapes(div)),
                              "ResNet-50's 161 parameter tensors" + (f", channels / {div}" if div > 1 else "")))
        else:
            raise ValueError(f"unknown case family {family!r}; choose from {FAMILIES}")
    return [c for c in cases if c.numel <= max_numel] or cases[:1]
