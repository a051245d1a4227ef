"""Turns timings into report rows (GB/s, % of the yardstick, ratios), the terminal table,
the three target checks and the results JSON."""
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

import fused_optim
from fused_optim.env import cpu_model

from .cpu_first import RATIO_PEER, YARDSTICK_BYTES, OptimizerCase, Timing

SCHEMA = "fused_optim.bench.cpu_first/1"
IMPL_LABELS = {
    "cpu": "ours cpu",
    "torch": "ours torch",
    "authors": "authors' loop",
    "fused": "torch.optim fused",
    "foreach": "torch.optim foreach",
}


def timing_record(timing: Timing, numel: int, bytes_per_element: int) -> Dict:
    samples = sorted(timing.samples_s)
    return {
        "median_s": timing.median_s,
        "min_s": samples[0],
        "max_s": samples[-1],
        "samples_s": timing.samples_s,
        "gbps": bytes_per_element * numel / timing.median_s / 1e9,
    }


def yardstick_record(timing: Timing, numel: int) -> Dict:
    return {"op": "dst.add_(src)", "bytes_per_element": YARDSTICK_BYTES,
            **timing_record(timing, numel, YARDSTICK_BYTES)}


def case_record(name: str, shapes, numel: int, yardsticks: List[Timing]) -> Dict:
    """The case, with the yardstick samples of all its groups pooled (for the header line)."""
    pooled = Timing([s for t in yardsticks for s in t.samples_s])
    return {
        "name": name,
        "tensors": len(shapes),
        "elements": numel,
        "shapes": [list(s) for s in shapes],
        "yardstick": yardstick_record(pooled, numel),
    }


def row_record(case_name: str, opt: OptimizerCase, impl: str, timing: Timing, numel: int, yardstick: Timing) -> Dict:
    """One implementation of one optimizer; % of the yardstick timed interleaved with it."""
    yard = yardstick_record(yardstick, numel)
    rec = {
        "case": case_name,
        "optimizer": opt.name,
        "impl": impl,
        "hyperparameters": opt.kwargs,
        # GB/s and % use the bytes our native design moves for every implementation of the
        # optimizer, so within a group they are inverse times on one scale
        "bytes_per_element": opt.bytes_moved,
        "bytes_per_element_min": opt.bytes_min,
        **timing_record(timing, numel, opt.bytes_moved),
        "yardstick": yard,
    }
    rec["pct_yardstick"] = 100.0 * rec["gbps"] / yard["gbps"]
    return rec


def add_ratios(rows: List[Dict]) -> None:
    """time / peer time within each case: torch.optim fused and foreach (Adam's own for the
    Adam group, AdamW's for every other) and the optimizer's authors' loop. None if not run."""
    medians = {(r["case"], r["optimizer"], r["impl"]): r["median_s"] for r in rows}
    for r in rows:
        peer = "Adam" if r["optimizer"] == "Adam" else RATIO_PEER
        for impl, ref in (("fused", (peer, "fused")), ("foreach", (peer, "foreach")),
                          ("authors", (r["optimizer"], "authors"))):
            base = medians.get((r["case"], *ref))
            r[f"time_vs_{impl}"] = r["median_s"] / base if base else None


def _ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _spread(rec: Dict) -> str:
    return f"{rec['min_s'] * 1e3:.1f}-{rec['max_s'] * 1e3:.1f}"


def table(cases: List[Dict], rows: List[Dict]) -> str:
    header = (f"{'optimizer':<12} {'implementation':<20} {'median ms':>10} {'min-max ms':>15} {'B/el':>6} "
              f"{'GB/s':>6} {'% yard':>7} {'t/fused':>8} {'t/foreach':>9} {'t/authors':>9}")
    lines = []
    for c in cases:
        y = c["yardstick"]
        lines += ["", f"== {c['name']}: {c['tensors']} tensors, {c['elements'] / 1e6:.1f}M fp32 elements; "
                      f"yardstick dst.add_(src), all groups pooled: {y['median_s'] * 1e3:.2f} ms = "
                      f"{y['gbps']:.1f} GB/s", header, "-" * len(header)]
        group = None
        for r in (r for r in rows if r["case"] == c["name"]):
            if r["optimizer"] != group:  # the yardstick timed interleaved with this group
                group, y = r["optimizer"], r["yardstick"]
                lines.append(f"{group:<12} {'yardstick add_':<20} {y['median_s'] * 1e3:>10.2f} "
                             f"{_spread(y):>15} {YARDSTICK_BYTES:>6} {y['gbps']:>6.1f} {100:>6}%")
            moved = f"{r['bytes_per_element']}{'*' if r['bytes_per_element'] != r['bytes_per_element_min'] else ''}"
            lines.append(
                f"{r['optimizer']:<12} {IMPL_LABELS[r['impl']]:<20} {r['median_s'] * 1e3:>10.2f} {_spread(r):>15} "
                f"{moved:>6} {r['gbps']:>6.1f} {r['pct_yardstick']:>6.0f}% {_ratio(r['time_vs_fused']):>8} "
                f"{_ratio(r['time_vs_foreach']):>9} {_ratio(r['time_vs_authors']):>9}")
    lines += ["", "Each optimizer's rows and its yardstick add_ row were timed interleaved, step by step.",
              "B/el: bytes per element counted for GB/s and % yard (the bytes our native design moves; "
              "* = more than the minimum any design must move).",
              "t/x: median time / median time of x in the same case (x: torch.optim fused or foreach "
              "AdamW, Adam's own for Adam; the optimizer's authors' loop). < 1 is faster."]
    return "\n".join(lines)


def targets(cases: List[Dict], rows: List[Dict]) -> List[Dict]:
    """The three targets of the CPU backend, as measured values (not assertions): AdamW vs
    torch fused AdamW and % of the yardstick on the large list, Adai vs its authors' loop on
    the many-tensor case. A check whose rows were not run is left out."""
    big, many = cases[0]["name"], cases[-1]["name"]
    ours = {(r["case"], r["optimizer"]): r for r in rows if r["impl"] == "cpu"}
    checks = []
    adamw = ours.get((big, "AdamW"))
    if adamw and adamw["time_vs_fused"] is not None:
        checks.append({"check": f"AdamW cpu time / torch fused AdamW time, {big}",
                       "measured": adamw["time_vs_fused"], "target": "<= 1.1",
                       "met": adamw["time_vs_fused"] <= 1.1})
    for (case, name), r in ours.items():
        if case == big:
            checks.append({"check": f"{name} cpu % of yardstick ({r['bytes_per_element']} B/el moved), {big}",
                           "measured": r["pct_yardstick"], "target": ">= 80", "met": r["pct_yardstick"] >= 80})
    adai = ours.get((many, "Adai"))
    if adai and adai["time_vs_authors"] is not None:
        speedup = 1 / adai["time_vs_authors"]
        checks.append({"check": f"Adai cpu speed-up over the authors' loop, {many}",
                       "measured": speedup, "target": ">= 2.5", "met": speedup >= 2.5})
    return checks


def targets_text(checks: List[Dict]) -> str:
    lines = ["", "Targets (measured, not asserted):"]
    for c in checks:
        lines.append(f"  {c['check']}: {c['measured']:.2f} (target {c['target']}) "
                     f"{'met' if c['met'] else 'NOT met'}")
    return "\n".join(lines)


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _system_busy_s() -> float:
    """CPU seconds all processes have used since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


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


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def other_load_now(interval_s: float = 0.5) -> float:
    load = OtherLoad().start()
    time.sleep(interval_s)
    return load.value()


def environment(other_cpus_before: float, other_cpus_during: float) -> Dict:
    status = _git("status", "--porcelain")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "fused_optim": fused_optim.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # CPUs' worth of other processes' work; above ~0.1 the timings are not representative
        "other_cpus_busy": {"before_run": other_cpus_before, "during_run": other_cpus_during},
        "git_revision": _git("rev-parse", "HEAD"),
        # timings of a working tree with uncommitted edits do not belong to the revision alone
        "git_dirty": None if status is None else bool(status),
    }


def write_json(out_dir: Path, settings: Dict, env: Dict, cases: List[Dict], rows: List[Dict], checks: List[Dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"cpu_first-{stamp}{'-quick' if settings['quick'] else ''}.json"
    doc = {"schema": SCHEMA, "environment": env, "settings": settings, "cases": cases, "rows": rows, "targets": checks}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
