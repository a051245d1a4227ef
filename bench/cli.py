"""The command line of `python -m bench`. parse_args imports nothing heavy, so --help and usage
errors answer at once; resolve() then fills the defaults that depend on the device (it imports
torch). bench/README.md's options table lists the same flags (tests/test_bench.py checks it)."""
import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from . import names

DESCRIPTION = """Times every optimizer x backend x dtype x case of fused_optim against its peers
(torch.optim AdamW fused/foreach, torch.compile, the authors' loops) on the device at hand, and
prints a few lines saying where fused_optim is faster, the same or slower. It stops by itself
after --time-limit seconds (what it had to leave out is listed); Ctrl-C stops it early and
still writes what was measured. See bench/README.md."""

TIME_LIMIT_S = 240.0  # with the imports and the last group's overrun, the default run ends within 5 minutes
QUICK_TIME_LIMIT_S = 60.0
GROUP_LIMIT_S = 20.0
QUICK_GROUP_LIMIT_S = 5.0


def _list(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    p.add_argument("--device", default=None,
                   help="cpu or cuda[:N] (default: cuda when torch sees a GPU, else cpu; decided after "
                        "the command line is read)")
    p.add_argument("--optimizers", default=",".join(names.OPTIMIZERS),
                   help=f"comma list of {', '.join(names.OPTIMIZERS)} (default: all)")
    p.add_argument("--backends", default=",".join(names.OUR_BACKENDS),
                   help=f"our backends to measure, comma list of {', '.join(names.OUR_BACKENDS)} (default: all); "
                        "those not available or not serving the device are listed as skipped")
    p.add_argument("--peers", default=",".join(names.PEERS),
                   help=f"comma list of {', '.join(names.PEERS)} (default: all)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peer")
    p.add_argument("--compile-max-tensors", type=int, default=None,
                   help="compile the reference step only for cases with at most this many tensors "
                        "(compile time grows with the count; default 32 on cuda, 1 on cpu and with --quick)")
    p.add_argument("--dtype", default=None,
                   help="param dtypes, comma list of fp32, bf16, fp16 (default fp32,bf16; fp32 with --quick)")
    p.add_argument("--state-dtype", default=None,
                   help="state dtypes, comma list of fp32 (the default states) and bf16 "
                        "(state_dtype=torch.bfloat16); default fp32,bf16 on cuda, fp32 on cpu (the cpu "
                        "backend keeps fp32 states: bf16 rows there would time the torch reference)")
    p.add_argument("--cases", default=",".join(names.FAMILIES),
                   help=f"case families, comma list of {', '.join(names.FAMILIES)} (default: all)")
    p.add_argument("--sizes", default=None,
                   help="sizes of the large-tensor sweep, comma list of element counts (e.g. 1e6,1.6e7; "
                        "default by device)")
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes, fp32, fewer repeats and a {QUICK_TIME_LIMIT_S:g}-s --time-limit: a first answer "
                        "in about a minute")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per row (default 10, 5 with --quick, 20 on cuda)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed work after which a slow row stops early, once it has 3 samples "
                        "(default 1.0, 0.3 with --quick)")
    p.add_argument("--group-limit", type=float, default=None, metavar="SECONDS",
                   help="a group (one optimizer's rows in one case and dtype configuration) stops its timing "
                        f"rounds after this long once every row has 3 samples (default {GROUP_LIMIT_S:g}, "
                        f"{QUICK_GROUP_LIMIT_S:g} with --quick; 0: no limit)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="the whole run, counted from the start of the command: no group starts after this many "
                        "seconds, nor one that would not fit in the time left; what was left out is listed "
                        f"(default {TIME_LIMIT_S:g}, {QUICK_TIME_LIMIT_S:g} with --quick; 0: no limit)")
    p.add_argument("--clip", type=float, default=None, metavar="MAX_NORM",
                   help="also measure every row with gradient clipping at this max norm: our classes with "
                        "max_grad_norm, torch.optim after torch.nn.utils.clip_grad_norm_ (rows '...+clip')")
    p.add_argument("--precision", default="",
                   help="also measure bf16/fp16 param rows with our classes keeping them without lost updates: "
                        f"comma list of {', '.join(names.PRECISION_MODES)} (rows '+mw', '+rem', '+sr'; the "
                        "TE FusedAdam peer with master weights joins where installed)")
    p.add_argument("--load", action="store_true",
                   help="keep every core busy for the whole run with one pure-Python busy-loop process per "
                        "logical CPU (bench/load.py), as other jobs keep a shared host busy: the ratios then "
                        "compare fused_optim and its peers under the same load (results.json: settings.load)")
    p.add_argument("--details", action="store_true",
                   help="print the detailed table of every row after the summary (results.json has them either way)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out",
                   help="directory for results.json, results.png and the progress file results.jsonl "
                        "(default bench/out/)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line checked and the defaults that need no torch filled in; resolve() does
    the rest."""
    p = parser()
    args = p.parse_args(argv)

    def choose(flag, value, allowed):
        chosen = _list(value)
        bad = [v for v in chosen if v not in allowed]
        if bad or not chosen:
            p.error(f"{flag}: choose from {list(allowed)}, got {value!r}")
        return chosen

    args.optimizers = choose("--optimizers", args.optimizers, names.OPTIMIZERS)
    args.backends = choose("--backends", args.backends, names.OUR_BACKENDS)
    args.peers = [x for x in choose("--peers", args.peers, names.PEERS) if not (args.no_compile and x == "compiled")]
    args.dtype = choose("--dtype", args.dtype or ("fp32" if args.quick else "fp32,bf16"), names.DTYPES)
    if args.state_dtype is not None:
        args.state_dtype = choose("--state-dtype", args.state_dtype, names.STATE_DTYPES)
    args.cases = choose("--cases", args.cases, names.FAMILIES)
    args.precision = choose("--precision", args.precision, names.PRECISION_MODES) if args.precision else []
    try:
        args.sizes = [int(float(s)) for s in _list(args.sizes)] if args.sizes else None
    except ValueError:
        p.error(f"--sizes: element counts, got {args.sizes!r}")
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda"):
        p.error("--device: cpu or cuda[:N]")
    if args.repeats is not None and args.repeats < 3:
        p.error("--repeats must be >= 3")
    if args.budget is None:
        args.budget = 0.3 if args.quick else 1.0
    if args.time_limit is None:
        args.time_limit = QUICK_TIME_LIMIT_S if args.quick else TIME_LIMIT_S
    if args.group_limit is None:
        args.group_limit = QUICK_GROUP_LIMIT_S if args.quick else GROUP_LIMIT_S
    if args.time_limit < 0 or args.group_limit < 0:
        p.error("--time-limit and --group-limit: seconds >= 0 (0: no limit)")
    return args


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on the device, which needs torch: --device, --state-dtype,
    --compile-max-tensors, --repeats. args.device becomes a torch.device."""
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser().error("--device cuda: torch sees no GPU")
    args.device = device
    if args.state_dtype is None:
        args.state_dtype = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    if args.compile_max_tensors is None:
        # on 2 CPU cores compiling a 21-tensor list takes 10-40 s per optimizer and dtype: the
        # sweep's single tensors (one dynamic-shape graph per optimizer and dtype) fit the budget
        args.compile_max_tensors = 1 if args.quick or device.type == "cpu" else 32
    if args.repeats is None:
        args.repeats = 20 if device.type == "cuda" else (5 if args.quick else 10)
    return args
