"""python -m bench.host_time: the HOST time of one optimizer step on the cuda and triton
backends, for every optimizer class of fused_optim.registry, against torch.optim.AdamW
(fused=True, and foreach=True) on the same tensors. See bench/README.md.

On a GPU, step() is host work (collecting params, grads and states, checks, address lists, the
native call that only queues kernels) while the device runs the kernels asynchronously: when
the host is the slower of the two, the GPU idles. Two modes measure that host work:

- device (--device cuda, the default where torch sees a GPU): no stubs. A sample is the wall
  time of step() returning, kernels queued and not waited for, with the device synchronized
  before each sample (so no earlier work is in the queue) but not after the call.
- stubbed (--device cpu): on CPU tensors, the real Python host path of our step with only the
  lowest-level launch replaced by a no-op that counts its calls: fused_optim._cuda's step()
  entry (its Call, built for every pass, is the real module's) and triton_kernels'
  multi_tensor.launch(). Step counters stay on the CPU as next to CUDA params, and both
  backends are made to read them on the host as they do then. Not in a stubbed sample: the
  native step's own argument checks, the stream lookup and the pinned host-to-device copies
  (the counters, DualAdam's global step, Adai's vbar), which need a device. torch's rows run
  their whole step, CPU kernel included, so they are an upper bound on torch's host time
  (the ratios then flatter us by that kernel's time); the row "torch fused, 1-elem" (as many
  1-element tensors, next to no kernel work) is about its host time alone.

Cases: the LLaMA-7B-shaped list of bench/cases.py at 9 layers (84 tensors) with every
dimension divided by 512, the smallest scale that keeps every dimension at 8 or more, and
2000 small tensors (small_shapes). Rows are timed in rounds, one step of each per round, so
the drift of a shared machine hits every row alike.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

# Set before torch loads OpenMP: on a busy machine, OpenMP's default active waiting made torch's
# fused CPU step of small tensors hundreds of times slower (bench/NOTES.md), which would turn
# the peer's time into noise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from .cases import llama_shapes, small_shapes  # noqa: E402

SCHEMA = "fused_optim.bench.host_time/1"
BACKENDS = ("cuda", "triton")
REFERENCE_PEER = "torch AdamW fused"
# label: (torch.optim.AdamW flags, whether on 1-element tensors). On the CPU, fused AdamW on as
# many 1-element tensors is its step with next to no kernel work: about its host time.
PEERS = {REFERENCE_PEER: (dict(fused=True), False), "torch AdamW foreach": (dict(foreach=True), False),
         "torch fused, 1-elem": (dict(fused=True), True)}
LLAMA_SCALE, LLAMA_LAYERS = 512, 9  # 1 + 9 * 9 + 2 = 84 tensors; d 8, f 21, vocab 62
DEFAULT_OUT = Path("bench/out/host_time.json")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.host_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="cuda: measure on the GPU (device mode); cpu: kernels stubbed (stubbed mode). "
                        "Default: cuda where torch sees a GPU, else cpu")
    p.add_argument("--quick", action="store_true", help="two tiny cases and few samples (the tests)")
    p.add_argument("--optimizers", default=None, help="comma list of fused_optim.registry names (default: all)")
    p.add_argument("--samples", type=int, default=None, help="timed steps per row (default 21, --quick 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    return p.parse_args(argv)


def cases(quick: bool) -> List[Tuple[str, list]]:
    if quick:
        return [("LLaMA-7B shapes / 512, 1 layer", llama_shapes(LLAMA_SCALE, 1)), ("40 small", small_shapes(40))]
    return [(f"LLaMA-7B shapes / {LLAMA_SCALE}, {LLAMA_LAYERS} layers", llama_shapes(LLAMA_SCALE, LLAMA_LAYERS)),
            ("2000 small", small_shapes(2000))]


# ---- the stubs of stubbed mode -------------------------------------------------------------------

class LaunchCounter:
    """Stands in for the launches; its count shows that they were reached and that no kernel ran."""

    def __init__(self):
        self.calls = 0

    def swallow(self, *args, **kwargs) -> None:
        self.calls += 1


class CudaModuleWithoutLaunches:
    """fused_optim._cuda with step(), the entry that checks a Call and launches its kernels,
    swallowed; everything else (Call, chunk_count, operations) is the real module's. Device type
    "cpu", as in the host-emulation build of the tests, so cuda_backend takes CPU tensors."""

    def __init__(self, real, counter: LaunchCounter):
        # the real entries but step() as plain attributes: found as directly as on the module itself
        self.__dict__.update({name: getattr(real, name) for name in dir(real)
                              if not name.startswith("__") and name != "step"})
        self.device_type = "cpu"
        self._counter = counter
        self._checked = set()  # operations whose Call was checked (once each: reading a list field copies it)

    def step(self, name: str, call, hyper) -> None:
        if name not in self._checked:
            self._checked.add(name)
            if len(call.step_addresses) or call.global_step_address:
                raise RuntimeError(
                    f"bench.host_time: the stubbed {name} got step counter addresses, the path of counters on the "
                    "params' device; CPU counters next to CUDA params are read on the host: _stub_cuda must route "
                    "cuda_backend's counter reading to that path")
        self._counter.swallow()


def _patch(stack: ExitStack, owner, name: str, value) -> None:
    """owner.name = value until the stack closes (an AttributeError when the name is gone, so a
    renamed internal fails the run instead of silently leaving a kernel unstubbed)."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    stack.callback(setattr, owner, name, old)


def _stub_cuda(stack: ExitStack, counter: LaunchCounter) -> Optional[str]:
    """cuda_backend on CPU tensors with its launches swallowed; why not, if it cannot be."""
    from fused_optim import backends, cuda_backend

    if cuda_backend._cuda is None:
        return f"fused_optim._cuda is not built here ({cuda_backend._IMPORT_ERROR})"
    _patch(stack, cuda_backend, "_cuda", CudaModuleWithoutLaunches(cuda_backend._cuda, counter))
    _patch(stack, cuda_backend, "available", lambda: (True, "kernels stubbed"))
    # counters on the CPU are "on the device" for a module of device type cpu: read them on the
    # host instead, as next to CUDA params (the device type the real module reports)
    steps, global_step = cuda_backend._steps, cuda_backend._global_step
    _patch(stack, cuda_backend, "_steps",
           lambda name, counters, count, device, device_type: steps(name, counters, count, device, "cuda"))
    _patch(stack, cuda_backend, "_global_step",
           lambda name, value, device, device_type: global_step(name, value, device, "cuda"))
    prepared_steps = cuda_backend._prepared_steps  # (a step plan's counters, the same way)
    _patch(stack, cuda_backend, "_prepared_steps",
           lambda module, prepared, device_type: prepared_steps(module, prepared, "cuda"))
    serves = backends.serves
    _patch(stack, backends, "serves", lambda backend, device, *args, **kwargs: (
        (True, "kernels stubbed") if backend == "cuda" and device.type == "cpu"
        else serves(backend, device, *args, **kwargs)))
    return None


def _stub_triton(stack: ExitStack, counter: LaunchCounter) -> Optional[str]:
    """triton_backend on CPU tensors with its launches swallowed; why not, if it cannot be."""
    from fused_optim import triton_backend

    if triton_backend._IMPORT_ERROR is not None:
        return f"triton_backend did not import ({triton_backend._IMPORT_ERROR})"
    multi_tensor = triton_backend._mt
    _patch(stack, multi_tensor, "launch", counter.swallow)
    # the backend serves CPU tensors under the interpreter only; with launch() swallowed no kernel
    # is interpreted or compiled, whether TRITON_INTERPRET was set or not
    _patch(stack, multi_tensor, "INTERPRETED", True)
    # CPU counters next to CUDA params are read on the host (one copy per call)
    _patch(stack, triton_backend, "_host_steps", lambda steps, device: True)
    return None


@contextmanager
def kernels_stubbed(counter: LaunchCounter):
    """Both backends on CPU tensors, launches swallowed; yields {backend: why not} for those
    that cannot be stubbed here. Everything is restored on exit, the backends' cached
    availability and operations included."""
    from fused_optim import backends

    with ExitStack() as stack:
        saved = dict(backends._implementations)
        stack.callback(backends._implementations.update, saved)
        stack.callback(backends._implementations.clear)
        stack.callback(backends.availability.cache_clear)
        for name in BACKENDS:
            backends._implementations.pop(name, None)
        unavailable = {"cuda": _stub_cuda(stack, counter), "triton": _stub_triton(stack, counter)}
        backends.availability.cache_clear()
        yield {name: why for name, why in unavailable.items() if why}


# ---- the rows ------------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    optimizer: str
    impl: str  # a backend, or a PEERS key
    step: Callable[[], object]
    params: List[torch.Tensor]
    initial: List[torch.Tensor]  # the params before the first step: did any step write them?
    samples_s: List[float] = field(default_factory=list)
    stub_calls: int = 0

    def result(self, tensors: int, reference_s: Optional[float]) -> Dict:
        median = statistics.median(self.samples_s)
        return {"label": self.label, "optimizer": self.optimizer, "impl": self.impl, "median_s": median,
                "ms_per_step": median * 1e3, "us_per_tensor": median * 1e6 / tensors,
                "ratio_to_torch_fused": median / reference_s if reference_s else None,
                "samples_s": self.samples_s, "stub_calls": self.stub_calls,
                "params_changed": any(not torch.equal(p, q) for p, q in zip(self.params, self.initial))}


def _params(shapes, device: torch.device, grads: List[torch.Tensor]) -> List[torch.Tensor]:
    """Fresh params of these shapes, each holding its grad of `grads` (shared by every row: no
    step writes a grad)."""
    params = [torch.zeros(s, device=device).normal_(0, 0.1).requires_grad_() for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g
    return params


def _row(label: str, optimizer: str, impl: str, make: Callable[[List[torch.Tensor]], torch.optim.Optimizer],
         shapes, device: torch.device, grads: List[torch.Tensor]) -> Row:
    params = _params(shapes, device, grads)
    return Row(label, optimizer, impl, make(params).step, params, [p.detach().clone() for p in params])


def rows(shapes, device: torch.device, optimizers: List[str],
         unavailable: Dict[str, str]) -> Tuple[List[Row], List[Dict]]:
    """(rows, skipped): ours for every optimizer and backend, then torch's peers."""
    from fused_optim.backends import BackendUnavailable
    from fused_optim.registry import OPTIMIZERS

    grads = [torch.zeros(s, device=device).normal_(0, 0.01) for s in shapes]
    made, skipped = [], []
    for name in optimizers:
        spec = OPTIMIZERS[name]
        for backend in BACKENDS:
            label = f"{name} {backend}"
            if backend in unavailable:
                skipped.append({"label": label, "reason": unavailable[backend]})
                continue
            try:
                made.append(_row(label, name, backend, lambda ps: spec.cls(ps, **spec.bench_kwargs, backend=backend),
                                 shapes, device, grads))
            except BackendUnavailable as err:
                skipped.append({"label": label, "reason": str(err)})
    for label, (flags, one_element) in PEERS.items():
        peer_shapes = [(1,)] * len(shapes) if one_element else shapes
        peer_grads = [torch.full((1,), 0.01, device=device) for _ in shapes] if one_element else grads
        made.append(_row(label, "AdamW", label, lambda ps: torch.optim.AdamW(ps, **flags), peer_shapes, device,
                         peer_grads))
    return made, skipped


# ---- timing --------------------------------------------------------------------------------------

def time_rows(made: List[Row], device: torch.device, counter: LaunchCounter, warmup: int, samples: int) -> None:
    """`warmup` untimed steps of each row (states, plans, compiles), then rounds of one timed
    step per row. On a GPU the device is idle when a sample starts and is not waited for after
    step(): what is timed is the host's part alone."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for row in made:
        for _ in range(warmup):
            _counted(row, row.step, counter)
    for _ in range(samples):
        for row in made:
            sync()
            row.samples_s.append(_counted(row, _timed(row.step), counter))


def _timed(step: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start
    return run


def _counted(row: Row, call: Callable[[], object], counter: LaunchCounter):
    before = counter.calls
    result = call()
    row.stub_calls += counter.calls - before
    return result


# ---- the run -------------------------------------------------------------------------------------

def measure_case(name: str, shapes, device: torch.device, optimizers: List[str], unavailable: Dict[str, str],
                 counter: LaunchCounter, warmup: int, samples: int) -> Dict:
    made, skipped = rows(shapes, device, optimizers, unavailable)
    time_rows(made, device, counter, warmup, samples)
    reference = next(statistics.median(r.samples_s) for r in made if r.impl == REFERENCE_PEER)
    return {"name": name, "tensors": len(shapes), "elements": sum(math.prod(s) for s in shapes),
            "rows": [r.result(len(shapes), reference) for r in made], "skipped": skipped}


def mode_of(device: torch.device) -> str:
    return "device" if device.type == "cuda" else "stubbed"


def measure(device: torch.device, optimizers: List[str], quick: bool, samples: int) -> Iterator[Dict]:
    """Each case's results as it is measured (main writes the JSON after each: a run cut off by
    a time limit keeps its finished cases)."""
    warmup = 1 if quick else 3
    counter = LaunchCounter()
    with ExitStack() as stack:
        unavailable = {} if mode_of(device) == "device" else stack.enter_context(kernels_stubbed(counter))
        for name, shapes in cases(quick):
            yield measure_case(name, shapes, device, optimizers, unavailable, counter, warmup, samples)


NOTES = {
    "stubbed": "kernels stubbed: our rows run step()'s host path on CPU tensors, the cuda/triton launches "
               "swallowed; torch's rows run their whole step, CPU kernel included (an upper bound on torch's "
               "host time, so the ratio flatters us by that kernel's time); 'torch fused, 1-elem': as many 1-element "
               "tensors, about torch's host time alone",
    "device": "device mode: wall time of step() returning, kernels queued, the device synchronized before "
              "each sample and not after the call",
}


def table(mode: str, case: Dict) -> str:
    lines = [f"{case['name']}: {case['tensors']} tensors, {case['elements']:,} elements",
             f"  {'row':<24} {'ms/step':>9} {'us/tensor':>10} {'/ torch fused':>14}  launches"]
    for r in case["rows"]:
        ratio = f"{r['ratio_to_torch_fused']:.2f}x" if r["ratio_to_torch_fused"] is not None else "-"
        launches = r["stub_calls"] if mode == "stubbed" and r["impl"] in BACKENDS else ""
        lines.append(f"  {r['label']:<24} {r['ms_per_step']:>9.3f} {r['us_per_tensor']:>10.2f} {ratio:>14}  "
                     f"{launches}")
    lines += [f"  skipped {s['label']}: {s['reason']}" for s in case["skipped"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    from fused_optim.registry import OPTIMIZERS

    from .report import OtherLoad, environment, other_load_now

    started = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    optimizers = args.optimizers.split(",") if args.optimizers else list(OPTIMIZERS)
    unknown = [n for n in optimizers if n not in OPTIMIZERS]
    if unknown:
        sys.exit(f"python -m bench.host_time: unknown optimizer(s) {unknown}; choose from {list(OPTIMIZERS)}")
    samples = args.samples or (3 if args.quick else 21)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("python -m bench.host_time: --device cuda needs a GPU that torch sees (--device cpu stubs the kernels)")
    mode = mode_of(device)
    before = other_load_now()
    during = OtherLoad().start()
    # taken before the stubs make the backends' availability say "kernels stubbed"
    env = environment(device, before, 0.0, 0.0)
    doc = {"schema": SCHEMA, "mode": mode, "device_name": env["device_name"], "note": NOTES[mode],
           "command": " ".join(["python -m bench.host_time"] + (argv if argv is not None else sys.argv[1:])),
           "settings": {"quick": args.quick, "samples": samples, "optimizers": optimizers}, "environment": env,
           "cases": []}
    print(f"host time per step, {mode} mode on {env['device_name']} (median of {samples}; {NOTES[mode]})", flush=True)
    for case in measure(device, optimizers, args.quick, samples):
        doc["cases"].append(case)
        env["other_cpus_busy"]["during_run"], env["wall_s"] = during.value(), time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(table(mode, case), flush=True)
    print(f"written: {args.out}")
    if env["other_cpus_busy"]["during_run"] > 0.1:
        print(f"warning: other processes kept {env['other_cpus_busy']['during_run']:.2f} CPUs busy "
              "during the run: the times are not representative")
    return doc


if __name__ == "__main__":
    main()
