"""The README's results table from benchmark JSON files: python -m bench.markdown FILE...

One row per optimizer and case, for our cpu backend: median time, % of the bandwidth
yardstick, and time ratios against torch.optim's fused AdamW and the authors'-style loop,
each from the same run. Several files (repeated runs) give one column group per run.
"""
import json
import sys
from pathlib import Path
from typing import Dict, List


def _fmt(x, pattern):
    return "-" if x is None else pattern.format(x)


def table(runs: List[Dict]) -> str:
    header = "| optimizer | case | " + " | ".join(
        f"run {i + 1}: ms, % yardstick, x fused AdamW, x authors" for i in range(len(runs))) + " |"
    lines = [header, "|" + "---|" * (2 + len(runs))]
    keys = [(r["optimizer"], r["case"]) for r in runs[0]["rows"] if r["impl"] == "cpu"]
    for optimizer, case in keys:
        cells = []
        for run in runs:
            row = next(r for r in run["rows"] if r["impl"] == "cpu" and r["optimizer"] == optimizer and r["case"] == case)
            cells.append(f"{row['median_s'] * 1e3:.1f}, {row['pct_yardstick']:.0f}%, "
                         f"{_fmt(row['time_vs_fused'], '{:.2f}')}, {_fmt(row['time_vs_authors'], '{:.2f}')}")
        lines.append(f"| {optimizer} | {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(paths: List[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    env = runs[0]["environment"]
    print(f"{env['cpu_model']}, {env['threads']} threads, torch {env['torch']}; "
          + ", ".join(f"run {i + 1}: {run['environment']['date']}" for i, run in enumerate(runs)) + "\n")
    print(table(runs))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.markdown RESULTS.json [MORE.json ...]")
    main(sys.argv[1:])
