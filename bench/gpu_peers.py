"""The GPU peers our kernels will be measured against, measured on the device at hand:
python -m bench.gpu_peers [--device cuda] [--numel N] [--out DIR] [--no-compile]

Until fused_optim has GPU kernels, a lent GPU measures what they must beat (design.md):
- the yardstick: a large device-to-device copy, counting bytes read plus written (8 B/el; on
  a CPU the in-place dst.add_(src) stream of bench/README.md instead);
- torch.optim.AdamW(fused=True) and (foreach=True), 28 B/el;
- torch.compile of each optimizer's reference step (fused_optim.reference, what
  backend="torch" runs), at a fixed step count so it compiles once;
- our reference step eagerly (the auto fallback for GPU tensors today);
- our own kernels where the device has them (the cpu backend, when run on a CPU).
One fp32 tensor of --numel elements (the issues' 1B-element case by default on CUDA). Times
are medians over repeats after warm-up, taken with device events; ratios come from this run.
Runs on the CPU too (small sizes) so the script is checked where no GPU is.
"""
import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

FIXED_STEP = 10.0  # the reference step is compiled for this step count and timed at it


def median_seconds(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Dict:
    for _ in range(warmup):
        fn()
    samples: List[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}


def reference_step(name: str, params, grads, device) -> Callable[[], None]:
    """One step of the optimizer's reference functions (as backend="torch" calls them) on
    fixed state, with the default hyperparameters of its first registry case."""
    spec = OPTIMIZERS[name]
    opt = spec.cls(params, **spec.cases["default"], backend="torch")
    hyper = opt.hyper(opt.param_groups[0], 0)
    state = {k: [torch.full_like(p, 1.0 if k == "beta1_prod" else 0.0) for p in params]
             for k in spec.state_names}
    steps = [FIXED_STEP] * len(params)
    ref = fused_optim.reference
    if name in ("Adam", "AdamW"):
        return lambda: ref.adam_step(params, grads, state["exp_avg"], state["exp_avg_sq"], None, steps,
                                     decoupled=name == "AdamW", **hyper)
    if name == "AdaMomentum":
        return lambda: ref.adamomentum_step(params, grads, state["exp_avg"], state["exp_avg_sq"], None,
                                            steps, **hyper)
    if name in ("DualAdam", "InvAdam"):
        return lambda: ref.dualadam_step(params, grads, state["exp_avg"], state["exp_avg_sq"],
                                         global_step=int(FIXED_STEP), **hyper)
    count = sum(p.numel() for p in params)

    def adai():
        total = ref.adai_second_moment(params, grads, state["exp_avg_sq"], steps, beta2=hyper["beta2"],
                                       weight_decay=hyper["weight_decay"], decoupled=hyper["decoupled"])
        ref.adai_update(params, grads, state["exp_avg"], state["exp_avg_sq"], state["beta1_prod"], steps,
                        vbar=total / count, **hyper)
    return adai


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--numel", type=float, default=None, help="elements (default 1e9 on cuda, 4e6 on cpu)")
    parser.add_argument("--optimizers", default="AdamW,Adai,AdaMomentum,DualAdam")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build on a CPU)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    numel = int(args.numel or (1e9 if device.type == "cuda" else 4e6))
    names = [n for n in args.optimizers.split(",") if n]
    gen = torch.Generator(device=device).manual_seed(0)

    def tensor():
        return torch.randn(numel, device=device, generator=gen)

    rows = []

    def record(label: str, bytes_per_element: int, timing: Dict) -> None:
        timing.update(label=label, bytes_per_element=bytes_per_element,
                      gbps=bytes_per_element * numel / timing["median_s"] / 1e9)
        rows.append(timing)
        print(f"{label:<42} {timing['median_s'] * 1e3:9.3f} ms {timing['gbps']:8.1f} GB/s", flush=True)

    src, dst = tensor(), tensor()
    if device.type == "cuda":
        record("copy_ (read + write)", 8, median_seconds(lambda: dst.copy_(src), device, 3, args.repeats))
    else:  # on x86 a copy's stores read their lines first: add_ moves the 12 B it counts (design.md)
        record("add_ (read, read, write)", 12, median_seconds(lambda: dst.add_(src), device, 3, args.repeats))
    del src, dst
    param, grad = tensor(), tensor() * 0.01
    for mode in ("fused", "foreach"):
        p = param.clone().requires_grad_()
        p.grad = grad
        opt = torch.optim.AdamW([p], **{mode: True})
        record(f"torch.optim.AdamW({mode}=True)", 28, median_seconds(opt.step, device, 3, args.repeats))
        del opt, p
    native = [b for b in ("cpu",) if fused_optim.backends.serves(b, device)[0]]
    for name in names:
        moved = OPTIMIZERS[name].bytes_per_element
        for backend in native:  # our kernels, where this device has them
            spec = OPTIMIZERS[name]
            p = param.clone().requires_grad_()
            p.grad = grad
            opt = spec.cls([p], **spec.cases["default"], backend=backend)
            record(f"{name} fused_optim backend={backend}", moved, median_seconds(opt.step, device, 3, args.repeats))
            del opt, p
        step = reference_step(name, [param.clone()], [grad], device)
        record(f"{name} reference, eager", moved, median_seconds(step, device, 2, max(3, args.repeats // 4)))
        if not args.no_compile:
            t0 = time.perf_counter()
            compiled = torch.compile(step)
            compiled()
            build_s = time.perf_counter() - t0
            record(f"{name} reference, torch.compile", moved, median_seconds(compiled, device, 2, args.repeats))
            rows[-1]["compile_s"] = build_s
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    yardstick_gbps = rows[0]["gbps"]
    for row in rows:
        row["pct_yardstick"] = 100.0 * row["gbps"] / yardstick_gbps
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "numel": numel, "fused_optim": fused_optim.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_peers-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"schema": "fused_optim.bench.gpu_peers/1", "environment": env, "rows": rows}, indent=1))
    print(f"\n{env['device']}: % of the yardstick's bandwidth: " + ", ".join(f"{r['label']} {r['pct_yardstick']:.0f}%" for r in rows[1:]))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
