"""The measuring loop: the plan's groups in order, within --time-limit and --group-limit, each
one's record handed to the progress log as it ends. Ctrl-C, or SIGTERM (`timeout`, a batch
scheduler), stops it between two steps: the group in progress is dropped, the rest are
recorded as not measured, and the caller still writes everything that was."""
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import impls, report
from .plan import Group
from .record import KEY
from .timing import MIN_REPEATS, YARDSTICK, Yardstick, time_interleaved

GRACE = 0.1  # a group still short of MIN_REPEATS rounds this share of --time-limit after it is dropped


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


@contextmanager
def _sigterm_stops_the_run():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Outcome:
    groups: List[Dict] = field(default_factory=list)  # the measured groups' records
    cut: List[Dict] = field(default_factory=list)  # the groups not measured, each with why
    interrupted: Optional[str] = None  # "Ctrl-C" or "SIGTERM"


def _why_not_start(group: Group, left_s: float, time_limit: float, shortest: Dict[str, float]) -> Optional[str]:
    """Why a group is not started with left_s seconds of the --time-limit left, or None. A
    case's shortest group so far estimates the next: a group that cannot fit is not begun."""
    if left_s <= 0:
        return f"not started: the {time_limit:g}-s --time-limit was reached"
    est = shortest.get(group.case.name)
    if est is not None and est > left_s:
        return (f"not started: {left_s:.0f} s of the {time_limit:g}-s --time-limit were left, and this "
                f"case's groups took at least {est:.0f} s")
    return None


class TooSlow(Exception):
    """A group whose timing rounds reached the give-up time before MIN_REPEATS rounds."""


def _group(group: Group, workload: impls.Workload, yard: Yardstick, yard_call: Callable[[], object],
           args, stop_at: float, stop_by: str, give_up_at: float) -> Dict:
    """One group built and timed: its record (rows without speed-ups; assemble adds them)."""
    device = args.device
    t0 = time.perf_counter()
    built, why_not = impls.build_group(group.optimizer, workload, impls.DTYPES[group.config["state_dtype"]],
                                       list(group.backends), list(group.peers), args.compile_max_tensors,
                                       args.clip, args.precision)
    record = {"kind": "group", **group.key(), "rows": [], "yardstick_samples_s": [], "shortened": None,
              "skipped": [{**group.key(), "impl": key, "reason": reason} for key, reason in why_not],
              "build_s": time.perf_counter() - t0, "rounds": 0}
    if built:
        calls = {YARDSTICK: yard_call, **{i.key: i.step for i in built}}
        timings, stopped = time_interleaved(calls, device, args.repeats, args.budget, stop_at, give_up_at,
                                             before=YARDSTICK)
        if min(len(t.samples_s) for t in timings.values()) < MIN_REPEATS:
            raise TooSlow(f"not finished: {MIN_REPEATS} timing rounds did not fit in the {args.time_limit:g}-s "
                          f"--time-limit and its {GRACE:.0%} grace")
        yard_timing = timings.pop(YARDSTICK)
        yrec = yard.record(yard_timing)
        record["rows"] = [report.row_record(group.case, group.config, group.optimizer, i, timings[i.key], yrec)
                          for i in built]
        record["yardstick_samples_s"] = yard_timing.samples_s
        record["rounds"] = max(len(timings[i.key].samples_s) for i in built)
        if stopped:
            record["shortened"] = (f"timing stopped after {record['rounds']} rounds at the {stop_by}, "
                                   f"before every row had --repeats {args.repeats} samples")
    return record


def measure(args, plan: List[Group], yard: Yardstick, write: Callable[[Dict], None],
            progress: Callable[[str], None], start: float) -> Outcome:
    """start: the time.perf_counter() --time-limit counts from."""
    device = args.device
    deadline = start + args.time_limit if args.time_limit else math.inf
    out = Outcome()
    shortest: Dict[str, float] = {}
    workload, workload_of, yard_call = None, None, None
    announced = False

    def leave_out(group: Group, reason: str) -> None:
        rec = {"kind": "cut", **group.key(), "reason": reason}
        out.cut.append(rec)
        write(rec)

    with _sigterm_stops_the_run():
        for index, group in enumerate(plan):
            try:
                now = time.perf_counter()
                why = _why_not_start(group, deadline - now, args.time_limit, shortest)
                if why:
                    if not announced:
                        print(f"\n--time-limit: the groups from {group.label()} on that do not fit are left out "
                              "(listed in the summary)", file=sys.stderr, flush=True)
                        announced = True
                    leave_out(group, why)
                    progress(f"left out: {group.label()}")
                    continue
                group_end = now + args.group_limit if args.group_limit else math.inf
                stop_by = (f"{args.group_limit:g}-s --group-limit" if group_end <= deadline
                           else f"{args.time_limit:g}-s --time-limit")
                try:
                    if yard_call is None:  # one pair of yardstick tensors serves every group
                        yard_call = yard.call(device)
                        yard_call()  # its first touch, outside every group's timing
                    if workload_of != (group.case.name, group.config["param_dtype"]):
                        workload, workload_of = None, None
                        impls.free(device)
                        pdt = impls.DTYPES[group.config["param_dtype"]]
                        workload = impls.Workload(group.case.shapes, device, pdt)
                        workload_of = (group.case.name, group.config["param_dtype"])
                    rec = _group(group, workload, yard, yard_call, args, min(group_end, deadline), stop_by,
                                 deadline + GRACE * args.time_limit)
                except TooSlow as why_not:
                    leave_out(group, str(why_not))
                    progress(group.label())
                    continue
                except Exception as err:  # out of memory, a library's bug: say so, measure the rest
                    msg = f"failed: {type(err).__name__}: {err}".splitlines()[0][:300]
                    print(f"\n{group.label()}: {msg}", file=sys.stderr, flush=True)
                    leave_out(group, msg)
                    progress(group.label())
                    continue
                finally:
                    impls.free(device)
                rec["wall_s"] = time.perf_counter() - now
                rec["end_s"] = time.perf_counter() - start
                out.groups.append(rec)
                write(rec)
                shortest[group.case.name] = min(shortest.get(group.case.name, math.inf), rec["wall_s"])
                progress(group.label())
            except (KeyboardInterrupt, Terminated) as stop:
                out.interrupted = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
                left = {tuple(r[k] for k in KEY) for r in out.groups + out.cut}
                for rest in plan[index:]:
                    if tuple(rest.key()[k] for k in KEY) not in left:
                        leave_out(rest, f"not measured: {out.interrupted} stopped the run")
                break
    return out
