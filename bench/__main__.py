"""python -m bench: every optimizer x backend x dtype x case against its peers, in one run, on
the device at hand (see bench/README.md)."""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from fused_optim.backends import serves
from fused_optim.reference._common import math_dtype

from . import cases as case_mod
from . import impls, plot, report
from .timing import MIN_REPEATS, WARMUP, YARDSTICK, Timing, Yardstick, time_interleaved

BUSY_CPUS = 0.1  # an idle machine measures about 0.01
YARDSTICK_NUMEL = {"cpu": 1 << 25, "cuda": 1 << 28}  # 128 MB / 1 GB per fp32 tensor: beyond any cache
QUICK_YARDSTICK_NUMEL = {"cpu": 1 << 23, "cuda": 1 << 26}


def _list(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    names = [o.name for o in impls.OPTIMIZERS]
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda[:N] (default: cuda when torch sees a GPU)")
    p.add_argument("--optimizers", default=",".join(names), help=f"comma list of {names}")
    p.add_argument("--backends", default=",".join(impls.OUR_BACKENDS),
                   help=f"our backends to measure, comma list of {list(impls.OUR_BACKENDS)}; those not "
                        "available or not serving the device are listed as skipped")
    p.add_argument("--peers", default=",".join(impls.PEERS), help=f"comma list of {list(impls.PEERS)}")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peer")
    p.add_argument("--compile-max-tensors", type=int, default=None,
                   help="compile the reference step only for cases with at most this many tensors "
                        "(compile time grows with the count: default 32 on cuda, 1 on cpu and with --quick)")
    p.add_argument("--dtype", default=None,
                   help="param dtypes, comma list of fp32, bf16, fp16 (default fp32,bf16; fp32 with --quick)")
    p.add_argument("--state-dtype", default=None,
                   help="state dtypes: fp32 (the default states) and bf16 (state_dtype=torch.bfloat16); default "
                        "fp32,bf16 on cuda, fp32 on cpu (whose native backend keeps fp32 states: bf16 rows "
                        "there would time the torch reference)")
    p.add_argument("--cases", default=",".join(case_mod.FAMILIES), help=f"comma list of {list(case_mod.FAMILIES)}")
    p.add_argument("--sizes", default=None,
                   help="sizes of the large-tensor sweep, comma list of element counts (e.g. 1e6,1.6e7)")
    p.add_argument("--quick", action="store_true", help="small sizes and fewer repeats (< 60 s on 2 cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per row (default 10, 5 with --quick, 20 on cuda)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed work after which a slow row stops early (at least 3 samples; "
                        "default 1.0, 0.3 with --quick)")
    p.add_argument("--clip", type=float, default=None, metavar="MAX_NORM",
                   help="also measure every row with gradient clipping at this max norm: our classes with "
                        "max_grad_norm, torch.optim after torch.nn.utils.clip_grad_norm_ (rows '...+clip')")
    p.add_argument("--precision", default="",
                   help="also measure bf16/fp16 param rows with our classes keeping them without lost updates: "
                        "comma list of master_weights, param_remainders, stochastic_rounding (rows '+mw', '+rem', "
                        "'+sr'; the TE FusedAdam peer with master weights joins where installed)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out",
                   help="directory for results.json and results.png (default bench/out/)")
    args = p.parse_args(argv)

    def choose(flag, value, allowed):
        chosen = _list(value)
        bad = [v for v in chosen if v not in allowed]
        if bad or not chosen:
            p.error(f"{flag}: choose from {list(allowed)}, got {value!r}")
        return chosen

    args.optimizers = choose("--optimizers", args.optimizers, names)
    args.backends = choose("--backends", args.backends, impls.OUR_BACKENDS)
    args.peers = [x for x in choose("--peers", args.peers, impls.PEERS) if not (args.no_compile and x == "compiled")]
    args.dtype = choose("--dtype", args.dtype or ("fp32" if args.quick else "fp32,bf16"), impls.DTYPES)
    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.state_dtype = choose("--state-dtype", args.state_dtype or ("fp32,bf16" if on_gpu else "fp32"),
                              ("fp32", "bf16"))
    args.cases = choose("--cases", args.cases, case_mod.FAMILIES)
    args.precision = choose("--precision", args.precision, impls.PRECISION_MODES) if args.precision else []
    try:
        args.sizes = [int(float(s)) for s in _list(args.sizes)] if args.sizes else None
    except ValueError:
        p.error(f"--sizes: element counts, got {args.sizes!r}")
    args.device = torch.device(args.device)
    if args.device.type not in ("cpu", "cuda"):
        p.error("--device: cpu or cuda")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU")
    if args.compile_max_tensors is None:
        # on 2 CPU cores compiling a 21-tensor list takes 10-40 s per optimizer and dtype: the
        # sweep's single tensors (one dynamic-shape graph per optimizer and dtype) fit the budget
        args.compile_max_tensors = 1 if args.quick or args.device.type == "cpu" else 32
    if args.repeats is None:
        args.repeats = 20 if args.device.type == "cuda" else (5 if args.quick else 10)
    if args.budget is None:
        args.budget = 0.3 if args.quick else 1.0
    if args.repeats < 3:
        p.error("--repeats must be >= 3")
    return args


def _progress(total: int):
    """tqdm when installed, else one line per group on stderr (the table goes to stdout)."""
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


def _warn_if_busy(cpus: float, when: str) -> None:
    if cpus > BUSY_CPUS:
        print(f"warning: other processes kept {cpus:.2f} CPUs busy {when}; parallel regions wait for "
              "them, so these CPU timings are not representative", file=sys.stderr, flush=True)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 8 << 30


def max_case_numel(device: torch.device, args, yard_numel: int) -> int:
    """The most elements a case may have so that the largest group fits in 85% of the free
    memory: the initial values and grads, each implementation's params and up to 3 fp32 states
    (our backends that serve the device, and at most 3 peers: AdamW's group has fused, foreach
    and compiled, the others compiled, authors and pytorch_optimizer), about 6 fp32 temporaries
    of the per-tensor loops, and the yardstick's two fp32 tensors."""
    pb = max(impls.DTYPES[d].itemsize for d in args.dtype)
    n_impls = sum(serves(b, device)[0] and (b in ("cpu", "torch")) == (device.type == "cpu" or b == "torch")
                  for b in args.backends) + min(3, len(args.peers))
    n_impls += len(args.precision)  # (a master or remainder per element besides: within the 12 B)
    if args.clip is not None:  # each row again with clipping, the peers on their own grads
        n_impls *= 2
        pb_grads = pb * min(2, len(args.peers))
    else:
        pb_grads = 0
    per_element = 2 * pb + n_impls * (pb + 12) + 24 + pb_grads
    return max(1 << 16, int((0.85 * _free_bytes(device) - 8 * yard_numel) // per_element))


def dtype_configs(args, notes: List[str]) -> List[Dict]:
    """(param dtype, state dtype) pairs: each param dtype with its default states (fp32 for
    bf16/fp16 params), and with bf16 states where the classes have the state_dtype option."""
    supported = [o.name for o in impls.OPTIMIZERS if impls.supports_state_dtype(o)]
    configs = []
    for name in args.dtype:
        pdt = impls.DTYPES[name]
        for sname in args.state_dtype:
            sdt = impls.DTYPES[sname]
            if sdt == math_dtype(pdt):
                configs.append({"param_dtype": name, "state_dtype": sname})
            elif sname == "bf16":
                if supported:
                    configs.append({"param_dtype": name, "state_dtype": sname})
    if "bf16" in args.state_dtype and not supported:
        notes.append("bf16 states: not measured, no optimizer class has a state_dtype option in this "
                     "fused_optim (rows appear once it exists)")
    elif "bf16" in args.state_dtype and len(supported) < len(impls.OPTIMIZERS):
        notes.append(f"bf16 states: measured for {', '.join(supported)} only (the classes with state_dtype)")
    return configs


def groups(args, config: Dict):
    """(optimizer, our backends, peers) per group; the AdamW peers are measured even when
    AdamW is not selected, since every other optimizer's speed-up refers to them."""
    names = list(args.optimizers)
    torch_peers = [p for p in args.peers if p in impls.TORCH_PEERS]
    if impls.RATIO_PEER not in names and torch_peers:
        names.insert(0, impls.RATIO_PEER)
    default_state = impls.DTYPES[config["state_dtype"]] == math_dtype(impls.DTYPES[config["param_dtype"]])
    out = []
    for name in names:
        opt = impls.BY_NAME[name]
        if not default_state and not impls.supports_state_dtype(opt):
            continue
        if name in args.optimizers:
            out.append((opt, args.backends, args.peers))
        else:
            out.append((opt, [], torch_peers))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    device = args.device
    t_start = time.perf_counter()
    before = report.other_load_now()
    _warn_if_busy(before, "before the run")
    during = report.OtherLoad().start()
    notes: List[str] = []
    yard_numel = (QUICK_YARDSTICK_NUMEL if args.quick else YARDSTICK_NUMEL)[device.type]
    limit = max_case_numel(device, args, yard_numel)
    case_list = case_mod.build(device, args.quick, args.cases, limit, args.sizes)
    if args.sizes and max(args.sizes) > limit:
        notes.append(f"--sizes capped to {limit:,} elements: what one group's tensors fit in the free memory")
    configs = dtype_configs(args, notes)
    module, why = impls.pytorch_optimizer_module()
    if "pytorch_optimizer" in args.peers and module is None:
        notes.append(f"pytorch_optimizer: {why}")
    yard = Yardstick.for_device(device, yard_numel)
    plan = [(c, cfg, g) for c in case_list for cfg in configs for g in groups(args, cfg)]
    step, close = _progress(len(plan))

    rows, skipped, case_records = [], [], {}
    for case in case_list:
        rec = {"name": case.name, "family": case.family, "tensors": case.tensors, "elements": case.numel,
               "note": case.note, "shapes": [list(s) for s in case.shapes], "configs": []}
        case_records[case.name] = rec
        for cfg in configs:
            pdt, sdt = impls.DTYPES[cfg["param_dtype"]], impls.DTYPES[cfg["state_dtype"]]
            workload = impls.Workload(case.shapes, device, pdt)
            pooled = []
            for c, g_cfg, (opt, backends, peers) in plan:
                if c is not case or g_cfg is not cfg:
                    continue
                group, why_not = impls.build_group(opt, workload, sdt, backends, peers, args.compile_max_tensors,
                                                   args.clip, args.precision)
                skipped += [{"case": case.name, **cfg, "optimizer": opt.name, "impl": key, "reason": reason}
                            for key, reason in why_not]
                if group:
                    calls = {YARDSTICK: yard.call(device), **{i.key: i.step for i in group}}
                    calls[YARDSTICK]()  # its first touch; every implementation made one step in build_group
                    timings = time_interleaved(calls, device, args.repeats, args.budget)
                    yard_timing = timings.pop(YARDSTICK)
                    pooled.append(yard_timing)
                    yrec = yard.record(yard_timing)
                    rows += [report.row_record(case, cfg, opt, i, timings[i.key], yrec) for i in group]
                    del calls, timings
                del group
                impls.free(device)
                step(f"{case.name} {cfg['param_dtype']}/{cfg['state_dtype']} {opt.name}")
            if pooled:
                rec["configs"].append({**cfg, "yardstick": yard.record(Timing([s for t in pooled for s in t.samples_s]))})
            del workload
            impls.free(device)
    close()
    other_during = during.value()
    report.add_speedups(rows)
    cases_out = list(case_records.values())
    print(report.table(cases_out, rows))
    for n in notes:
        print(f"note: {n}")
    reasons = sorted({(s["impl"], s["reason"]) for s in skipped})
    for impl, reason in reasons:
        print(f"skipped {impl}: {reason}")
    settings = {"device": str(device), "quick": args.quick, "optimizers": args.optimizers, "backends": args.backends,
                "peers": args.peers, "dtype": args.dtype, "state_dtype": args.state_dtype, "cases": args.cases,
                "sizes": args.sizes, "repeats": args.repeats, "budget_s": args.budget,
                "compile_max_tensors": args.compile_max_tensors, "max_case_numel": limit, "clip": args.clip,
                "precision": args.precision,
                "warmup": 1 + WARMUP, "min_repeats": MIN_REPEATS}
    env = report.environment(device, before, other_during, time.perf_counter() - t_start)
    doc = {"environment": env, "settings": settings, "notes": notes, "cases": cases_out, "rows": rows,
           "skipped": skipped}
    path = report.write_json(args.out / "results.json", doc)
    png, why_no_plot = plot.save(doc, args.out / "results.png")
    if png is None:
        notes.append(f"no plot: {why_no_plot}")
        print(f"note: no plot: {why_no_plot}")
        report.write_json(path, doc)
    print(f"\nresults: {path}" + (f", plot: {png}" if png else "") + f" ({env['wall_s']:.0f} s)")
    _warn_if_busy(other_during, "during the run")


if __name__ == "__main__":
    main()
