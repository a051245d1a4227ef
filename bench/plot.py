"""The results plot (matplotlib, optional): % of the yardstick per optimizer and
implementation for each non-sweep case, and time per step against size for the sweep."""
from pathlib import Path
from typing import Dict, Optional, Tuple

ORDER = ("ours:cpu", "ours:cuda", "ours:triton", "ours:torch", "compiled", "authors", "pytorch_optimizer",
         "fused", "foreach")
COLORS = dict(zip(ORDER, ("tab:blue", "tab:cyan", "tab:purple", "tab:orange", "tab:green", "tab:red",
                          "tab:pink", "tab:gray", "tab:olive")))


def save(doc: Dict, path: Path) -> Tuple[Optional[Path], str]:
    """(path of the PNG, "") or (None, why there is none)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install matplotlib)"
    from .report import LABELS

    rows = doc["rows"]
    if not rows:
        return None, "no rows"
    first = (rows[0]["param_dtype"], rows[0]["state_dtype"])  # the first dtype configuration
    rows = [r for r in rows if (r["param_dtype"], r["state_dtype"]) == first]
    sweep = [c for c in doc["cases"] if c["family"] == "large"]
    panels = [c for c in doc["cases"] if c["family"] != "large"] + sweep[-1:]
    fig, axes = plt.subplots(len(panels) + bool(sweep), 1, figsize=(11, 3.2 * (len(panels) + bool(sweep))),
                             squeeze=False)
    axes = axes[:, 0]
    impls = [i for i in ORDER if any(r["impl"] == i for r in rows)]
    for ax, case in zip(axes, panels):
        sel = [r for r in rows if r["case"] == case["name"]]
        opts = list(dict.fromkeys(r["optimizer"] for r in sel))
        width = 0.8 / max(1, len(impls))
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for j, o in enumerate(opts):
                r = next((r for r in sel if r["optimizer"] == o and r["impl"] == impl), None)
                if r:
                    xs.append(j + (k - (len(impls) - 1) / 2) * width)
                    ys.append(r["pct_yardstick"])
            if xs:
                ax.bar(xs, ys, width, color=COLORS[impl])
        ax.axhline(100, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(opts)), opts)
        ax.set_ylabel("% of yardstick")
        ax.set_title(f"{case['name']} ({case['tensors']} tensors, {case['elements'] / 1e6:.1f}M), "
                     f"params {first[0]}, states {first[1]}", fontsize=10)
    from matplotlib.patches import Patch
    axes[0].legend(handles=[Patch(color=COLORS[i], label=LABELS[i]) for i in impls], fontsize=7, ncol=5,
                   loc="upper right")
    if sweep:
        ax = axes[-1]
        sizes = {c["name"]: c["elements"] for c in sweep}
        lines = {}
        for r in rows:
            if r["case"] in sizes and (r["impl"] in ("ours:cpu", "ours:cuda", "ours:triton") or r["optimizer"] == "AdamW"):
                lines.setdefault((r["optimizer"], r["impl"]), []).append((sizes[r["case"]], r["median_s"] * 1e3))
        for (o, impl), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls="-" if impl.startswith("ours") else "--",
                    label=f"{o} {LABELS[impl]}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements (one tensor)")
        ax.set_ylabel("ms per step (median)")
        ax.set_title(f"size sweep: our native backend per optimizer, and AdamW's peers; params {first[0]}, "
                     f"states {first[1]}", fontsize=10)
        ax.legend(fontsize=7, ncol=3)
    env = doc["environment"]
    fig.suptitle(f"fused_optim bench: {env['device_name']}, {env['threads']} threads, torch {env['versions']['torch']}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path, ""
