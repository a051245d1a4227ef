"""The README's results tables from results.json files (or the results.jsonl a killed run left):
python -m bench.markdown FILE... [--all-sizes]

Per file (one run on one device): for our native backend on that device (cuda, triton or cpu;
the torch backend where there is none), one row per case, dtype configuration and
optimizer: median step time, % of the bandwidth yardstick, and the speed-up over each peer
measured in the same run (with cuda, the triton backend's time beside it); then the size sweep as time and % of the yardstick per size.
"""
import argparse
from pathlib import Path
from typing import Dict, List, Optional

from .record import load

NATIVE = ("ours:cuda", "ours:triton", "ours:cpu", "ours:torch")
PEERS = (("fused", "torch.optim fused"), ("foreach", "torch.optim foreach"),
         ("compiled", "torch.compile(reference)"), ("authors", "authors' loop"),
         ("pytorch_optimizer", "pytorch_optimizer"))


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _ours(rows: List[Dict]) -> str:
    present = {r["impl"] for r in rows}
    return next(i for i in NATIVE if i in present)


def header(doc: Dict) -> str:
    env = doc["environment"]
    busy = env["other_cpus_busy"]["during_run"]
    rev = (env["git_revision"] or "unknown")[:10] + ("+dirty" if env["git_dirty"] else "")
    text = (f"{env['device_name']} ({env['device']}), {env['threads']} threads, torch {env['versions']['torch']}, "
            f"fused_optim {env['versions']['fused_optim']} at {rev}, {env['date']}; run took "
            f"{env['wall_s']:.0f} s, other processes kept "
            + ("an unknown number of" if busy is None else f"{busy:.2f}") + " CPUs busy during it.")
    if doc.get("interrupted"):
        text += f" Interrupted: {doc['interrupted']}."
    if doc.get("cut"):
        text += f" {len(doc['cut'])} of {doc['settings']['groups']} groups were not measured (results.json: cut)."
    return text


def table(doc: Dict, all_sizes: bool = False) -> str:
    rows = doc["rows"]
    if not any(r["impl"] in NATIVE for r in rows):
        return "No row of our backends was measured."
    ours = _ours(rows)
    sweep = [c["name"] for c in doc["cases"] if c["family"] == "large"]
    shown = [c["name"] for c in doc["cases"] if c["family"] != "large" or all_sizes or c["name"] == sweep[-1]]
    peers = [(k, label) for k, label in PEERS if any(r["speedup_over"][k] is not None for r in rows if r["impl"] == ours)]
    # on a GPU both kernel backends: triton's time beside cuda's (target: at most 1.3x)
    second = ({(r["case"], r["param_dtype"], r["state_dtype"], r["optimizer"]): r for r in rows
               if r["impl"] == "ours:triton"} if ours == "ours:cuda" else {})
    lines = [f"Our `{ours.split(':')[1]}` backend; speed-up = the peer's median step time / ours "
             "(above 1: ours is faster), both from the same run; torch.optim is AdamW (Adam for Adam).", "",
             "| case | params / states | optimizer | ms | % yardstick | "
             + " | ".join(f"vs {label}" for _, label in peers)
             + (" | triton: ms, % yardstick, time / cuda" if second else "") + " |",
             "|" + "---|" * (5 + len(peers) + (1 if second else 0))]
    for case in shown:
        for r in (r for r in rows if r["case"] == case and r["impl"] == ours):
            cells = [case, f"{r['param_dtype']} / {r['state_dtype']}", r["optimizer"],
                     f"{r['median_s'] * 1e3:.2f}", f"{r['pct_yardstick']:.0f}%"]
            cells += [_x(r["speedup_over"][k]) for k, _ in peers]
            if second:
                t = second.get((r["case"], r["param_dtype"], r["state_dtype"], r["optimizer"]))
                cells.append("-" if t is None else f"{t['median_s'] * 1e3:.2f}, {t['pct_yardstick']:.0f}%, "
                             f"{t['median_s'] / r['median_s']:.2f}x")
            lines.append("| " + " | ".join(cells) + " |")
    if len(sweep) > 1:
        configs = list(dict.fromkeys((r["param_dtype"], r["state_dtype"]) for r in rows))
        lines += ["", "Size sweep (one tensor): ms per step and % of the yardstick, same backend.", "",
                  "| params / states | optimizer | " + " | ".join(sweep) + " |", "|" + "---|" * (2 + len(sweep))]
        for p, s in configs:
            for name in dict.fromkeys(r["optimizer"] for r in rows if r["impl"] == ours):
                cells = []
                for case in sweep:
                    r = next((r for r in rows if r["case"] == case and r["impl"] == ours and r["optimizer"] == name
                              and (r["param_dtype"], r["state_dtype"]) == (p, s)), None)
                    cells.append("-" if r is None else f"{r['median_s'] * 1e3:.2f} ({r['pct_yardstick']:.0f}%)")
                lines.append(f"| {p} / {s} | {name} | " + " | ".join(cells) + " |")
    compiled = [r["compile_s"] for r in rows if r["compile_s"]]
    yard = {c["name"]: c["configs"][0]["yardstick"] for c in doc["cases"] if c["configs"]}
    any_yard = next(iter(yard.values()), None)
    notes = []
    if any_yard:
        notes.append(f"yardstick: `{any_yard['op']}` on {any_yard['numel'] / 2**20:.0f}M fp32 elements "
                     f"({any_yard['bytes_per_element']} B/element), "
                     f"{min(y['gbps'] for y in yard.values()):.0f}-{max(y['gbps'] for y in yard.values()):.0f} GB/s "
                     "across the cases")
    if compiled:
        notes.append(f"torch.compile: first call (compile) {max(compiled):.1f} s at most, not timed")
    notes += doc.get("notes", [])
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.markdown", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--all-sizes", action="store_true", help="every size of the sweep in the main table")
    args = parser.parse_args(argv)
    for i, path in enumerate(args.files):
        doc = load(path)
        if i:
            print()
        print(header(doc) + "\n")
        print(table(doc, args.all_sizes))


if __name__ == "__main__":
    main()
