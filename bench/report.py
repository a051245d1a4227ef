"""Timings to report rows (GB/s, % of the yardstick, speed-ups over the peers), the detailed
terminal table (--details) and the environment record."""
import datetime
import importlib
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

import fused_optim
from fused_optim.env import cpu_model

from .impls import DTYPE_NAMES, Impl, OptimizerCase, bytes_per_element
from .names import RATIO_PEER
from .timing import GPU_BURST, Timing

LABELS = {
    "ours:cpu": "fused_optim cpu",
    "ours:cuda": "fused_optim cuda",
    "ours:triton": "fused_optim triton",
    "ours:torch": "fused_optim torch",
    "compiled": "torch.compile(ref)",
    "authors": "authors' loop",
    "pytorch_optimizer": "pytorch_optimizer",
    "fused": "torch.optim fused",
    "foreach": "torch.optim foreach",
}
LABELS.update({k + "+clip": ("clip_grad_norm_ + " + v if k in ("fused", "foreach") else v + " +clip")
               for k, v in list(LABELS.items())})
LABELS.update({f"ours:{b}{suffix}": f"fused_optim {b} {words}" for b in ("cpu", "cuda", "triton", "torch")
               for suffix, words in (("+mw", "master weights"), ("+rem", "remainders"),
                                     ("+sr", "stochastic rounding"))})
LABELS["te"] = "TE FusedAdam master weights"
# the peers every row's speed-up refers to: key in speedup_over -> (group, impl)
SPEEDUP_PEERS = ("fused", "foreach", "compiled", "authors", "pytorch_optimizer", "ours:torch")


def timing_record(timing: Timing, numel: int, nbytes: int) -> Dict:
    q1, q3 = timing.quartiles()
    return {"median_s": timing.median_s, "q1_s": q1, "q3_s": q3,
            "min_s": min(timing.samples_s), "max_s": max(timing.samples_s),
            "samples_s": timing.samples_s, "gbps": nbytes * numel / timing.median_s / 1e9,
            "host_median_s": statistics.median(timing.host_samples_s) if timing.host_samples_s else None}


def row_record(case, config: Dict, opt: OptimizerCase, impl: Impl, timing: Timing, yard: Dict) -> Dict:
    """One implementation in one group; % of the yardstick timed interleaved with it. GB/s
    counts the bytes this implementation's dtypes really move (param and grad bytes from the
    param dtype, state bytes from the state dtype it keeps)."""
    nbytes = (bytes_per_element(opt.name, impl.param_dtype, impl.state_dtype, impl.cpu_design)
              + impl.extra_grad_accesses * impl.param_dtype.itemsize + impl.extra_bytes)
    rec = {
        "case": case.name, "family": case.family, "tensors": case.tensors, "elements": case.numel,
        **config,
        "optimizer": opt.name, "impl": impl.key, "label": LABELS[impl.key],
        "impl_param_dtype": DTYPE_NAMES[impl.param_dtype], "impl_state_dtype": DTYPE_NAMES[impl.state_dtype],
        "hyperparameters": opt.kwargs, "bytes_per_element": nbytes,
        **timing_record(timing, case.numel, nbytes),
        "compile_s": impl.extra.get("compile_s"),
        "yardstick": yard,
    }
    rec["pct_yardstick"] = 100.0 * rec["gbps"] / yard["gbps"]
    return rec


def add_speedups(rows: List[Dict]) -> None:
    """speedup_over[peer] = peer's median time / this row's (> 1: this row is faster), in the
    same case and dtype configuration: torch.optim fused/foreach from the AdamW group (Adam's
    own for Adam), the others from the row's own group. None where the peer did not run.
    A clip row ("...+clip") is compared with the clip rows of its peers (clip_grad_norm_ +
    torch.optim fused/foreach, our torch backend with clipping) only. iqr_apart[peer]: the two
    rows' interquartile ranges do not overlap (the summary calls a ratio a difference only then)."""
    by_key = {(r["case"], r["param_dtype"], r["state_dtype"], r["optimizer"], r["impl"]): r for r in rows}
    for r in rows:
        where = (r["case"], r["param_dtype"], r["state_dtype"])
        out, apart = {}, {}
        clipped = r["impl"].endswith("+clip")
        for peer in SPEEDUP_PEERS:
            group = ("Adam" if r["optimizer"] == "Adam" else RATIO_PEER) if peer in ("fused", "foreach") else r["optimizer"]
            key = peer + "+clip" if clipped else peer
            base = by_key.get((*where, group, key))
            if base is None or (group, key) == (r["optimizer"], r["impl"]):
                out[peer] = apart[peer] = None
            else:
                out[peer] = base["median_s"] / r["median_s"]
                apart[peer] = r["q3_s"] < base["q1_s"] or base["q3_s"] < r["q1_s"]
        r["speedup_over"] = out
        r["iqr_apart"] = apart


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(cases: List[Dict], rows: List[Dict]) -> str:
    header = (f"{'optimizer':<12} {'implementation':<36} {'median ms':>10} {'IQR ms':>15} {'bytes':>5} "
              f"{'GB/s':>7} {'% yardstick':>11} {'x fused':>8} {'x foreach':>9} {'x compile':>9} {'x authors':>9}"
              + (f" {'host ms':>8}" if any(r.get("host_median_s") is not None for r in rows) else ""))
    lines = []
    for c in cases:
        for cfg in c["configs"]:
            sel = [r for r in rows if r["case"] == c["name"] and r["param_dtype"] == cfg["param_dtype"]
                   and r["state_dtype"] == cfg["state_dtype"]]
            if not sel:
                continue
            y = cfg["yardstick"]
            lines += ["", f"== {c['name']} ({c['tensors']} tensors, {c['elements'] / 1e6:.2f}M elements), "
                          f"params {cfg['param_dtype']}, states {cfg['state_dtype']}; yardstick {y['op']} "
                          f"on {y['numel'] / 1e6:.0f}M fp32, pooled: {y['gbps']:.1f} GB/s", header, "-" * len(header)]
            group = None
            for r in sel:
                if r["optimizer"] != group:
                    group, g = r["optimizer"], r["yardstick"]
                    lines.append(f"{group:<12} {'yardstick':<36} {g['median_s'] * 1e3:>10.3f} "
                                 f"{_iqr(g):>15} {g['bytes_per_element']:>5} {g['gbps']:>7.1f} {100:>10}%")
                s = r["speedup_over"]
                label = r["label"] + ("" if r["impl_state_dtype"] == r["state_dtype"] else f" ({r['impl_state_dtype']} states)")
                lines.append(f"{r['optimizer']:<12} {label:<36} {r['median_s'] * 1e3:>10.3f} {_iqr(r):>15} "
                             f"{r['bytes_per_element']:>5} {r['gbps']:>7.1f} {r['pct_yardstick']:>10.0f}% "
                             f"{_x(s['fused']):>8} {_x(s['foreach']):>9} {_x(s['compiled']):>9} {_x(s['authors']):>9}"
                             + ("" if r.get("host_median_s") is None else f" {r['host_median_s'] * 1e3:>8.3f}"))
    lines += ["", "Each optimizer's rows and its yardstick row were timed interleaved, step by step.",
              "bytes: what one step moves per element with that row's param/state dtypes; GB/s and % yardstick use it.",
              "x peer: the peer's median time / this row's in the same case and dtypes (> 1: faster than the peer);",
              "fused/foreach: torch.optim AdamW (Adam for Adam); compile: torch.compile of our reference step."]
    if any(r.get("host_median_s") is not None for r in rows):
        lines += [f"GPU: each sample is a burst of {GPU_BURST} back-to-back steps (bench/timing.py); host ms: the "
                  "host's time per step, hidden while it is under the device's."]
    return "\n".join(lines)


def _iqr(rec: Dict) -> str:
    return f"{rec['q1_s'] * 1e3:.3f}-{rec['q3_s'] * 1e3:.3f}"


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _system_busy_s() -> float:
    """CPU seconds all processes have used since boot (/proc/stat: all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class OtherLoad:
    """CPUs' worth of work done by OTHER processes between start() and value(): the system's
    busy time minus this process's own. Anything else on the CPUs makes every parallel region
    wait for a descheduled thread, so a run with other load is not representative."""

    def start(self) -> "OtherLoad":
        self._t = (time.perf_counter(), _system_busy_s(), _own_cpu_s())
        return self

    def value(self) -> float:
        wall, busy, own = (now - then for now, then in zip(
            (time.perf_counter(), _system_busy_s(), _own_cpu_s()), self._t))
        return max(0.0, busy - own) / wall


def other_load_now(interval_s: float = 0.5) -> float:
    load = OtherLoad().start()
    time.sleep(interval_s)
    return load.value()


def _version(module: str) -> Optional[str]:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def environment(device: torch.device, other_before: float, other_during: float, wall_s: float) -> Dict:
    status = _git("status", "--porcelain")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": gpu or cpu_model(),
        "cpu_model": cpu_model(),
        "gpu_name": gpu,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "triton": _version("triton"),
                     "fused_optim": fused_optim.__version__, "numpy": _version("numpy"),
                     "pytorch_optimizer": _version("pytorch_optimizer")},
        "backends": {b: dict(zip(("available", "why"), fused_optim.availability(b)))
                     for b in ("torch", "cpu", "cuda", "triton")},
        "git_revision": _git("rev-parse", "HEAD"),
        # timings of a working tree with uncommitted edits do not belong to the revision alone
        "git_dirty": None if status is None else bool(status),
        # CPUs' worth of other processes' work; above ~0.1 the CPU timings are not representative
        "other_cpus_busy": {"before_run": other_before, "during_run": other_during},
        "wall_s": wall_s,
    }
