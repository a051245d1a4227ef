"""python -m bench after its command line is read: set up the run, measure, then print the
summary (and with --details the tables) and write results.json and results.png."""
import contextlib
import sys
import time
from typing import List, Optional

from . import cases as case_mod
from . import impls, plan, plot, report
from .load import BusyLoad
from .measure import measure
from .record import JSON, ProgressLog, assemble, write_json
from .summary import BUSY_CPUS, summary
from .timing import MIN_REPEATS, WARMUP, Yardstick

YARDSTICK_NUMEL = {"cpu": 1 << 25, "cuda": 1 << 28}  # 128 MB / 1 GB per fp32 tensor: beyond any cache
QUICK_YARDSTICK_NUMEL = {"cpu": 1 << 23, "cuda": 1 << 26}


def _progress(total: int):
    """tqdm when installed, else one line per group on stderr (the summary goes to stdout)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True)

        def step(label):
            bar.set_description(label)
            bar.update()
        return step, bar.close
    done = [0]

    def step(label):
        done[0] += 1
        print(f"[{done[0]}/{total}] {label}", file=sys.stderr, flush=True)
    return step, lambda: None


def _settings(args, limit: int, n_groups: int, load: Optional[BusyLoad]) -> dict:
    return {"device": str(args.device), "quick": args.quick, "optimizers": args.optimizers,
            "backends": args.backends, "peers": args.peers, "dtype": args.dtype, "state_dtype": args.state_dtype,
            "cases": args.cases, "sizes": args.sizes, "repeats": args.repeats, "budget_s": args.budget,
            "group_limit_s": args.group_limit, "time_limit_s": args.time_limit,
            "compile_max_tensors": args.compile_max_tensors, "max_case_numel": limit, "clip": args.clip,
            "precision": args.precision, "warmup": 1 + WARMUP, "min_repeats": MIN_REPEATS, "groups": n_groups,
            "load": None if load is None else {"busy_processes": load.processes, "pids": load.pids}}


def _busy_load(wanted: bool):
    """--load: the busy-loop processes for the run (stopped when the with block ends, Ctrl-C
    and errors included), else no load."""
    return BusyLoad() if wanted else contextlib.nullcontext(None)


def run(args, started: float) -> dict:
    """started: time.perf_counter() when the command began, where --time-limit counts from."""
    before = report.other_load_now()  # the machine as found, before any --load
    if args.device.type == "cpu" and before > BUSY_CPUS:
        print(f"warning: other processes keep {before:.2f} CPUs busy; parallel regions wait for them, so "
              "these CPU timings will not be representative", file=sys.stderr, flush=True)
    with _busy_load(args.load) as load:
        return _run(args, started, before, load)


def _run(args, started: float, before: float, load: Optional[BusyLoad]) -> dict:
    device = args.device
    during = report.OtherLoad().start()
    notes: List[str] = []
    yard_numel = (QUICK_YARDSTICK_NUMEL if args.quick else YARDSTICK_NUMEL)[device.type]
    limit = plan.max_case_numel(device, args, yard_numel)
    case_list = case_mod.build(device, args.quick, args.cases, limit, args.sizes)
    if args.sizes and max(args.sizes) > limit:
        notes.append(f"--sizes capped to {limit:,} elements: what one group's tensors fit in the free memory")
    configs = plan.dtype_configs(args, notes)
    module, why = impls.pytorch_optimizer_module()
    if "pytorch_optimizer" in args.peers and module is None:
        notes.append(f"pytorch_optimizer: {why}")
    yard = Yardstick.for_device(device, yard_numel)
    groups = plan.ordered(args, case_list, configs)
    start = {"environment": report.environment(device, before, None, None),
             "settings": _settings(args, limit, len(groups), load), "notes": notes, "configs": configs,
             "yardstick": {"op": yard.op, "bytes_per_element": yard.bytes_per_element, "numel": yard.numel},
             "cases": [{"name": c.name, "family": c.family, "tensors": c.tensors, "elements": c.numel,
                        "note": c.note, "shapes": [list(s) for s in c.shapes]} for c in case_list]}
    log = ProgressLog(args.out, start)
    step, close = _progress(len(groups))
    try:
        outcome = measure(args, groups, yard, log.write, step, started)
    finally:
        close()
    other_during = during.value()
    start["environment"] = report.environment(device, before, other_during, time.perf_counter() - started)
    doc = assemble(start, outcome.groups, outcome.cut, outcome.interrupted)
    path = write_json(args.out / JSON, doc)
    log.close(remove=True)  # results.json now holds all of it
    png, why_no_plot = plot.save(doc, args.out / "results.png")
    if png is None:
        doc["notes"].append(f"no plot: {why_no_plot}")
        write_json(path, doc)
    print(summary(doc))
    if args.details:
        print(report.table(doc["cases"], doc["rows"]))
        for impl, reason in sorted({(s["impl"], s["reason"]) for s in doc["skipped"]}):
            print(f"skipped {impl}: {reason}")
    for n in doc["notes"]:
        print(f"note: {n}")
    print(f"\nresults: {path}" + (f", plot: {png}" if png else "") + f" ({doc['environment']['wall_s']:.0f} s)"
          + ("" if args.details else "; every row: --details, or python -m bench.markdown " + str(path)))
    return doc
