"""ZeRO-Offload's optimizer step: our cpu backend against DeepSpeedCPUAdam on what DeepSpeed
hands the offloaded optimizer, one flat fp32 partition (param and grad) per rank.

    python -m bench.zero_offload [--sizes 50M,250M] [--repeats 7] [--json out.json] [--no-peer]

Each of our classes is timed interleaved (bench.timing) with the read-modify-write yardstick
(dst.add_(src), 12 B/element) and, for Adam/AdamW, with DeepSpeedCPUAdam in the same mode
(adamw_mode), on the same partition size; one group at a time, so that a 250M-element
partition needs a few GB, not the states of every class at once. DeepSpeedCPUAdam JIT-builds
its op on first use (minutes on 2 cores, then cached under TORCH_EXTENSIONS_DIR): that happens
here before anything is timed. Reported: median ms per step, % of the yardstick (the bytes a
step must move, bench.impls.bytes_per_element, over the time, against the yardstick's rate),
and our time over DeepSpeedCPUAdam's (>= 1.0x: ours is at least as fast).
"""
import argparse
import gc
import json
import os
import sys
from typing import Dict, List

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

import fused_optim  # noqa: E402
from fused_optim.registry import OPTIMIZERS  # noqa: E402

from .impls import bytes_per_element  # noqa: E402
from .timing import Yardstick, time_interleaved  # noqa: E402

# our class -> DeepSpeedCPUAdam's adamw_mode for the same update
PEERS = {"AdamW": True, "Adam": False}


def parse_size(text: str) -> int:
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def deepspeed_cpu_adam():
    """DeepSpeedCPUAdam with its op built (one step on a tiny param), or (None, why)."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as e:  # not installed, or no CPU op for this platform
        return None, f"deepspeed unavailable: {e}"
    p = torch.nn.Parameter(torch.zeros(16))
    p.grad = torch.ones(16)
    DeepSpeedCPUAdam([p]).step()
    return DeepSpeedCPUAdam, None


def stepper(make, numel: int, grad: torch.Tensor):
    """One optimizer over a fresh flat fp32 partition sharing the grad; its first step made
    (states allocated and touched) before timing."""
    p = torch.nn.Parameter(torch.randn(numel) * 0.1)
    p.grad = grad
    opt = make([p])
    opt.step()
    return opt.step


def run(sizes: List[int], names: List[str], repeats: int, budget_s: float, peer: bool = True) -> Dict:
    cpu_adam, why = deepspeed_cpu_adam() if peer else (None, "left out (--no-peer)")
    device = torch.device("cpu")
    results = {"threads": torch.get_num_threads(), "deepspeed": why or "DeepSpeedCPUAdam", "sizes": []}
    for numel in sizes:
        yard = Yardstick.for_device(device, numel)
        grad = torch.randn(numel) * 1e-2
        rows = []
        for name in names:
            spec = OPTIMIZERS[name]
            calls = {"yardstick": yard.call(device),
                     name: stepper(lambda ps: spec.cls(ps, **spec.cases["default"], backend="cpu"), numel, grad)}
            if name in PEERS and cpu_adam is not None:
                calls["DeepSpeedCPUAdam"] = stepper(lambda ps: cpu_adam(ps, adamw_mode=PEERS[name]), numel, grad)
            timings, _ = time_interleaved(calls, device, repeats, budget_s)
            yard_gbps = yard.bytes_per_element * numel / timings["yardstick"].median_s / 1e9
            ours = timings[name].median_s
            moved = bytes_per_element(name, torch.float32, torch.float32, cpu_design=True)
            row = {"optimizer": name, "ms": ours * 1e3,
                   "pct_yardstick": 100.0 * moved * numel / ours / 1e9 / yard_gbps,
                   "yardstick_ms": timings["yardstick"].median_s * 1e3}
            if "DeepSpeedCPUAdam" in timings:
                peer = timings["DeepSpeedCPUAdam"].median_s
                row.update(deepspeed_ms=peer * 1e3, speedup=peer / ours)
            rows.append(row)
            print(format_row(numel, row), flush=True)
            del calls, timings
            gc.collect()
        results["sizes"].append({"numel": numel, "rows": rows})
    return results


def format_row(numel: int, row: Dict) -> str:
    text = f"{numel / 1e6:6.0f}M  {row['optimizer']:<12} {row['ms']:9.1f} ms  {row['pct_yardstick']:5.0f}% yardstick"
    if "deepspeed_ms" in row:
        text += f"   DeepSpeedCPUAdam {row['deepspeed_ms']:9.1f} ms  ours {row['speedup']:.2f}x"
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50M,250M", help="flat partition sizes (elements), comma-separated")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="our classes, comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget-s", type=float, default=20.0, help="timed seconds per row before fewer repeats")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-peer", action="store_true", help="without DeepSpeedCPUAdam (and its op build)")
    args = parser.parse_args(argv)
    if not fused_optim.availability("cpu")[0]:
        sys.exit(f"the cpu backend is unavailable: {fused_optim.availability('cpu')[1]}")
    results = run([parse_size(s) for s in args.sizes.split(",")], args.optimizers.split(","), args.repeats,
                  args.budget_s, peer=not args.no_peer)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
