"""python -m bench: the first CPU benchmark (see bench/README.md)."""
import argparse
import sys
from pathlib import Path

from . import cpu_first, report

BUSY_CPUS = 0.1  # an idle machine measures about 0.01


def parse_args(argv=None) -> argparse.Namespace:
    names = [o.name for o in cpu_first.OPTIMIZERS]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 1/10 of the sizes (a smoke run, < 60 s)")
    parser.add_argument("--optimizers", default=",".join(names), help=f"comma list of {names}")
    parser.add_argument("--backends", default=",".join(cpu_first.IMPLS),
                        help=f"comma list of implementations {list(cpu_first.IMPLS)}")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out", help="directory of the JSON")
    parser.add_argument("--repeats", type=int, default=30,
                        help=f"timed steps per row (at least {cpu_first.MIN_REPEATS}; slow rows stop after "
                             f"{cpu_first.ROW_BUDGET_S:g} s)")
    args = parser.parse_args(argv)
    args.optimizers = _choices(parser, "--optimizers", args.optimizers, names)
    args.backends = _choices(parser, "--backends", args.backends, cpu_first.IMPLS)
    if args.repeats < cpu_first.MIN_REPEATS:
        parser.error(f"--repeats must be >= {cpu_first.MIN_REPEATS}")
    return args


def _choices(parser, flag, value, allowed):
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        parser.error(f"{flag}: choose from {list(allowed)}, got {value!r}")
    return chosen


def _progress(total: int):
    """tqdm when installed, else one line per optimizer group on stderr (the table goes to stdout)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, file=sys.stderr)

        def step(label):
            bar.set_description(label)
            bar.update()
        return step, bar.close

    done = [0]

    def step(label):
        done[0] += 1
        print(f"[{done[0]}/{total}] {label}", file=sys.stderr, flush=True)
    return step, lambda: None


def _warn_if_busy(cpus: float, when: str) -> None:
    if cpus > BUSY_CPUS:
        print(f"warning: other processes kept {cpus:.2f} CPUs busy {when}; parallel regions wait for "
              "them, so these timings are not representative", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    before = report.other_load_now()
    _warn_if_busy(before, "before the run")
    during = report.OtherLoad().start()
    groups = cpu_first.plan(args.optimizers, args.backends)
    case_list = cpu_first.cases(args.quick)
    step, close = _progress(len(case_list) * len(groups))
    cases, rows = [], []
    for case_name, shapes in case_list:
        workload = cpu_first.Workload(shapes)
        yardsticks = []
        for opt, impls in groups:
            timings = cpu_first.measure_group(opt, impls, workload, args.repeats)
            step(f"{case_name}: {opt.name} ({', '.join(impls)})")
            yard = timings.pop(cpu_first.YARDSTICK)
            yardsticks.append(yard)
            rows += [report.row_record(case_name, opt, impl, timing, workload.numel, yard)
                     for impl, timing in timings.items()]
        cases.append(report.case_record(case_name, shapes, workload.numel, yardsticks))
    close()
    other_during = during.value()
    report.add_ratios(rows)
    checks = report.targets(cases, rows)
    print(report.table(cases, rows))
    print(report.targets_text(checks))
    settings = {"quick": args.quick, "optimizers": args.optimizers, "backends": args.backends,
                "repeats": args.repeats, "warmup": cpu_first.WARMUP, "min_repeats": cpu_first.MIN_REPEATS,
                "row_budget_s": cpu_first.ROW_BUDGET_S}
    path = report.write_json(args.out, settings, report.environment(before, other_during), cases, rows, checks)
    print(f"\nresults: {path}")
    _warn_if_busy(other_during, "during the run")


if __name__ == "__main__":
    main()
