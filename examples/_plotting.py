"""What the example scripts share: their command line, the optional matplotlib, saving a plot.
(Imported as `_plotting`: each example runs as `python examples/<name>.py`, which puts this
folder on sys.path.)"""
import argparse
from pathlib import Path

# in the current directory, so a run never rewrites the plots committed in examples/plots/
# (the README's figures: regenerated only on purpose, with --out examples/plots); .gitignore
# lists the name, for runs from inside the repository
OUT = Path("fused_optim_examples_out")


def command_line(doc: str, length: str, default: int, unit: str) -> argparse.ArgumentParser:
    """--out DIR (default ./fused_optim_examples_out) and the run length option, e.g. --steps 2000."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"folder for the plot (default ./{OUT}; the README's are in examples/plots)")
    parser.add_argument(f"--{length}", type=int, default=default, help=f"{unit} (default {default})")
    return parser


def pyplot():
    """matplotlib.pyplot drawing to files only, or None (saying so) when it is not installed:
    the examples still print their numbers without it."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed, so no plot: pip install matplotlib")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path.resolve()}")
