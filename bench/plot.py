"""The results plot (matplotlib, optional), for the first dtype configuration: % of the
yardstick per optimizer and implementation for each case (bars), and AdamW's implementations
across the size sweep. Linear % axes, one legend beside the panels: nothing covers a bar."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ORDER = ("ours:cpu", "ours:cuda", "ours:triton", "ours:torch", "compiled", "authors", "pytorch_optimizer",
         "fused", "foreach")
COLORS = dict(zip(ORDER, ("tab:blue", "tab:cyan", "tab:purple", "tab:orange", "tab:green", "tab:red",
                          "tab:pink", "tab:gray", "tab:olive")))


def _bars(ax, case: Dict, rows: List[Dict], impls: List[str], config: Tuple[str, str]) -> None:
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
    ax.set_ylim(0, max([105.0] + [r["pct_yardstick"] * 1.05 for r in sel]))
    ax.set_xticks(range(len(opts)), opts)
    ax.set_ylabel("% of yardstick")
    ax.set_title(f"{case['name']} ({case['tensors']} tensors, {case['elements'] / 1e6:.1f}M elements), "
                 f"params {config[0]}, states {config[1]}", fontsize=10)


def _sweep(ax, sweep: List[Dict], rows: List[Dict], impls: List[str], labels: Dict[str, str]) -> None:
    sizes = {c["name"]: c["elements"] for c in sweep}
    for impl in impls:
        pts = sorted((sizes[r["case"]], r["pct_yardstick"]) for r in rows
                     if r["case"] in sizes and r["optimizer"] == "AdamW" and r["impl"] == impl)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS[impl],
                    ls="-" if impl.startswith("ours") else "--", label=labels[impl])
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xticks([c["elements"] for c in sweep], [c["name"].split()[-1] for c in sweep])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("elements (one tensor)")
    ax.set_ylabel("% of yardstick")
    ax.set_title("AdamW across the size sweep (solid: fused_optim, dashed: peers)", fontsize=10)


def figure(doc: Dict):
    """The matplotlib figure of a results document, or (None, why there is none)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return None, "matplotlib is not installed (pip install matplotlib)"
    from .report import LABELS

    rows = doc["rows"]
    if not rows:
        return None, "no rows"
    config = (rows[0]["param_dtype"], rows[0]["state_dtype"])  # the first dtype configuration
    rows = [r for r in rows if (r["param_dtype"], r["state_dtype"]) == config]
    measured = {r["case"] for r in rows}
    sweep = [c for c in doc["cases"] if c["family"] == "large" and c["name"] in measured]
    panels = [c for c in doc["cases"] if c["family"] != "large" and c["name"] in measured] + sweep[-1:]
    with_sweep = len(sweep) > 1  # one size is a bar panel already
    n = len(panels) + with_sweep
    fig, axes = plt.subplots(n, 1, figsize=(11, 3.2 * n), squeeze=False)
    axes = axes[:, 0]
    impls = [i for i in ORDER if any(r["impl"] == i for r in rows)]
    for ax, case in zip(axes, panels):
        _bars(ax, case, rows, impls, config)
    if with_sweep:
        _sweep(axes[-1], sweep, rows, impls, LABELS)
    env = doc["environment"]
    fig.suptitle(f"fused_optim bench: {env['device_name']}, {env['threads']} threads, torch {env['versions']['torch']}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    axes[0].legend(handles=[Patch(color=COLORS[i], label=LABELS[i]) for i in impls], fontsize=8,
                   loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig, ""


def save(doc: Dict, path: Path) -> Tuple[Optional[Path], str]:
    """(path of the PNG, "") or (None, why there is none)."""
    fig, why = figure(doc)
    if fig is None:
        return None, why
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")  # "tight" takes in the legend beside the panels
    plt.close(fig)
    return path, ""
