"""The benchmark's command line (python -m bench): a tiny run in a subprocess, its results.json
checked against the schema documented in bench/README.md; the summary's verdicts; the time
limit, Ctrl-C/SIGTERM and a killed run's progress file; --help before torch; README and
argparse agreeing. No timing is asserted: the machine may be busy."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fused_optim
from bench import cases, cli, impls, names, record, summary

ROOT = Path(__file__).resolve().parents[1]

ENV_KEYS = {"date": str, "device": str, "device_name": str, "cpu_model": str, "logical_cpus": int, "threads": int,
            "versions": dict, "backends": dict, "git_revision": (str, type(None)), "git_dirty": (bool, type(None)),
            "other_cpus_busy": dict, "wall_s": float}
ROW_KEYS = {"case": str, "family": str, "tensors": int, "elements": int, "param_dtype": str, "state_dtype": str,
            "optimizer": str, "impl": str, "label": str, "impl_param_dtype": str, "impl_state_dtype": str,
            "hyperparameters": dict, "bytes_per_element": int, "median_s": float, "q1_s": float, "q3_s": float,
            "min_s": float, "max_s": float, "samples_s": list, "gbps": float, "pct_yardstick": float,
            "compile_s": (float, type(None)), "yardstick": dict, "speedup_over": dict, "iqr_apart": dict}
YARD_KEYS = {"op", "bytes_per_element", "numel", "median_s", "q1_s", "q3_s", "min_s", "max_s", "gbps"}


def _check(obj, keys):
    for key, kind in keys.items():
        assert key in obj, key
        assert isinstance(obj[key], kind), (key, obj[key])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--optimizers", "AdamW,Adai",
           "--cases", "large,llama", "--sizes", "4096", "--dtype", "fp32,bf16", "--repeats", "3", "--time-limit", "0",
           "--details", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), proc.stdout, out


def test_schema(run):
    doc, _, out = run
    assert doc["schema"] == "fused_optim.bench/3"
    assert doc["interrupted"] is None and doc["cut"] == [] and doc["complete"] is True
    assert not (out / "results.jsonl").exists()  # the progress file goes once results.json holds it all
    assert len(doc["timeline"]) == doc["settings"]["groups"] == 2 * 2 * 2  # cases x dtypes x optimizers
    _check(doc["environment"], ENV_KEYS)
    assert {"torch", "fused_optim", "numpy", "triton"} <= set(doc["environment"]["versions"])
    assert doc["settings"]["optimizers"] == ["AdamW", "Adai"]
    assert doc["settings"]["load"] is None
    assert [c["family"] for c in doc["cases"]] == ["large", "llama"]
    for case in doc["cases"]:
        assert case["tensors"] == len(case["shapes"])
        for cfg in case["configs"]:
            assert YARD_KEYS <= set(cfg["yardstick"])
    assert doc["rows"]
    for row in doc["rows"]:
        _check(row, ROW_KEYS)
        assert YARD_KEYS <= set(row["yardstick"])
        assert row["pct_yardstick"] > 0 and row["gbps"] > 0
        assert len(row["samples_s"]) >= 3
        assert set(row["speedup_over"]) == {"fused", "foreach", "compiled", "authors", "pytorch_optimizer", "ours:torch"}
    for skip in doc["skipped"]:
        assert skip["reason"]


def test_rows_cover_the_matrix(run):
    doc, _, _ = run
    got = {(r["case"], r["param_dtype"], r["optimizer"], r["impl"]) for r in doc["rows"]}
    ours = ("ours:cpu", "ours:torch") if fused_optim.availability("cpu")[0] else ("ours:torch",)
    for case in ("large 4K", "llama-7b/32 x1L"):
        for dtype in ("fp32", "bf16"):
            assert {(case, dtype, "AdamW", i) for i in ours + ("fused", "foreach")} <= got
            assert {(case, dtype, "Adai", i) for i in ours + ("authors",)} <= got
    skipped = {s["impl"] for s in doc["skipped"]}
    assert {"ours:cuda", "ours:triton"} <= skipped or fused_optim.availability("cuda")[0]
    # --quick compiles single-tensor cases only
    assert ("large 4K", "fp32", "Adai", "compiled") in got
    assert not any(r["impl"] == "compiled" for r in doc["rows"] if r["case"] == "llama-7b/32 x1L")
    adai = next(r for r in doc["rows"] if r["optimizer"] == "Adai" and r["impl"] == ours[0] and r["param_dtype"] == "bf16")
    assert adai["bytes_per_element"] == 4 * 2 + 6 * 4  # p, g twice, p written in bf16; 3 fp32 states read+written
    assert adai["speedup_over"]["authors"] is not None and adai["speedup_over"]["fused"] is not None


def test_table_notes_and_markdown(run):
    doc, stdout, out = run
    assert "yardstick" in stdout and "x fused" in stdout  # --details
    # the summary comes first, one line per case for AdamW
    first = stdout.index("AdamW, fp32 params and states, our fastest backend:")
    assert first < stdout.index("x fused")
    assert re.search(r"one 4K-element tensor: fused_optim \w+ is .*torch\.optim fused", stdout)
    assert "AdamW, bf16 params, fp32 states, our fastest backend:" in stdout
    assert any("pytorch_optimizer" in n for n in doc["notes"]) or doc["environment"]["versions"]["pytorch_optimizer"]
    md = subprocess.run([sys.executable, "-m", "bench.markdown", str(out / "results.json")], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert md.returncode == 0, md.stderr
    assert "| case | params / states | optimizer |" in md.stdout


def test_clip_rows(tmp_path):
    """--clip: each row again with clipping, compared with clip_grad_norm_ + torch.optim;
    bytes count the norm's read of the grads (and the rescale's read + write for the peers)."""
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--optimizers", "AdamW", "--cases", "large",
           "--sizes", "4096", "--dtype", "fp32", "--repeats", "3", "--peers", "fused", "--backends", "cpu,torch",
           "--clip", "0.5", "--details", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["clip"] == 0.5
    rows = {r["impl"]: r for r in doc["rows"]}
    ours = "ours:cpu" if fused_optim.availability("cpu")[0] else "ours:torch"
    assert {ours, ours + "+clip", "fused", "fused+clip", "ours:torch+clip"} <= set(rows)
    assert rows["fused+clip"]["bytes_per_element"] == 28 + 12
    assert rows["ours:torch+clip"]["bytes_per_element"] == 28 + 12  # a divided copy of the grads
    if ours == "ours:cpu":
        assert rows["ours:cpu+clip"]["bytes_per_element"] == 28 + 4  # divided inside the loop
    clipped = rows[ours + "+clip"]
    assert clipped["speedup_over"]["fused"] == pytest.approx(rows["fused+clip"]["median_s"] / clipped["median_s"])
    assert rows[ours]["speedup_over"]["fused"] == pytest.approx(rows["fused"]["median_s"] / rows[ours]["median_s"])
    assert "clip_grad_norm_ + torch.optim fused" in proc.stdout


def test_precision_rows(tmp_path):
    """--precision: bf16-param rows with each mode, bytes counting the masters/remainders,
    compared with torch.optim on the same bf16 params; Adai's clip rows on the cpu backend
    add no grad read (its reduction pass takes the norm); the te peer is reported as skipped
    (CUDA only)."""
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--optimizers", "AdamW,Adai", "--cases",
           "large", "--sizes", "4096", "--dtype", "bf16", "--repeats", "3", "--peers", "fused,te",
           "--backends", "cpu", "--clip", "0.5",
           "--precision", "master_weights,param_remainders,stochastic_rounding", "--details", "--out", str(tmp_path)]
    if not fused_optim.availability("cpu")[0]:
        pytest.skip("the native cpu backend is not built")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["precision"] == ["master_weights", "param_remainders", "stochastic_rounding"]
    rows = {(r["optimizer"], r["impl"]): r for r in doc["rows"]}
    # bf16 params and grads, fp32 states: 22 B in place; masters + 6, remainders + 4
    assert rows[("AdamW", "ours:cpu")]["bytes_per_element"] == 22
    assert rows[("AdamW", "ours:cpu+mw")]["bytes_per_element"] == 28
    assert rows[("AdamW", "ours:cpu+rem")]["bytes_per_element"] == 26
    assert rows[("AdamW", "ours:cpu+sr")]["bytes_per_element"] == 22
    assert rows[("Adai", "ours:cpu+clip")]["bytes_per_element"] == rows[("Adai", "ours:cpu")]["bytes_per_element"]
    mw = rows[("AdamW", "ours:cpu+mw")]
    assert mw["speedup_over"]["fused"] == pytest.approx(rows[("AdamW", "fused")]["median_s"] / mw["median_s"])
    assert any(s["impl"] == "te" and "CUDA" in s["reason"] for s in doc["skipped"])
    assert "fused_optim cpu master weights" in proc.stdout


# a plan of 21 tiny groups (7 optimizers x 3 dtypes), for the runs that are stopped early
MANY_GROUPS = ["--quick", "--device", "cpu", "--cases", "large", "--sizes", "4096", "--dtype", "fp32,bf16,fp16",
               "--peers", "fused", "--no-compile", "--repeats", "3", "--time-limit", "0"]


def _started(out: Path, *extra: str) -> subprocess.Popen:
    """A run of MANY_GROUPS (and `extra` flags), returned once its first group is in
    results.jsonl. SIGINT is restored to its default in the child: a shell's background jobs
    inherit it ignored."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", *MANY_GROUPS, *extra, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        progress = out / record.JSONL
        if progress.exists() and '"kind": "group"' in progress.read_text():
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no group finished: " + proc.stderr.read()[-2000:])


@pytest.mark.parametrize("sig, word, status", [(signal.SIGINT, "Ctrl-C", 130), (signal.SIGTERM, "SIGTERM", 143)])
def test_interrupted_run_writes_what_it_measured(tmp_path, sig, word, status):
    proc = _started(tmp_path)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stdout[-2000:] + stderr[-2000:]
    doc = json.loads((tmp_path / record.JSON).read_text())
    assert doc["interrupted"] == word and doc["complete"] is False
    measured = {(t["case"], t["param_dtype"], t["optimizer"]) for t in doc["timeline"]}
    left = {(c["case"], c["param_dtype"], c["optimizer"]) for c in doc["cut"]}
    assert measured and left and not measured & left
    assert len(measured | left) == doc["settings"]["groups"] == 24
    assert all(c["reason"] == f"not measured: {word} stopped the run" for c in doc["cut"])
    assert {r["optimizer"] for r in doc["rows"]} >= {"AdamW"}  # the plan starts with AdamW
    assert f"Interrupted ({word})" in stdout and "Left out:" in stdout
    assert not (tmp_path / record.JSONL).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_load_record(doc) -> None:
    """settings.load names one busy-loop process per CPU, and none of them outlived the run."""
    load = doc["settings"]["load"]
    assert load["busy_processes"] == os.cpu_count()
    assert len(load["pids"]) == load["busy_processes"]
    assert not any(_alive(pid) for pid in load["pids"])


def test_load_runs_under_busy_loops_and_stops_them(tmp_path):
    """--load: the smallest run under one busy-loop process per CPU, recorded in results.json
    and said in the summary; the processes are gone once the command has ended."""
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--optimizers", "AdamW", "--cases", "large",
           "--sizes", "4096", "--dtype", "fp32", "--repeats", "3", "--peers", "fused", "--no-compile",
           "--backends", "cpu,torch", "--load", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / record.JSON).read_text())
    _check_load_record(doc)
    assert doc["rows"] and doc["complete"] is True
    assert f"Loaded run (--load): {os.cpu_count()} busy-loop processes" in proc.stdout
    assert "WARNING" not in proc.stdout  # the load is the point of the run, not a disturbance


def test_load_stops_on_ctrl_c(tmp_path):
    proc = _started(tmp_path, "--load")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    doc = json.loads((tmp_path / record.JSON).read_text())
    assert doc["interrupted"] == "Ctrl-C"
    _check_load_record(doc)


def test_killed_run_leaves_its_progress_file(tmp_path):
    """SIGKILL: no results.json, but results.jsonl holds each finished group, and
    python -m bench.markdown reads it."""
    proc = _started(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (tmp_path / record.JSON).exists()
    doc = record.load(tmp_path / record.JSONL)
    assert doc["rows"] and doc["interrupted"] == "killed before it wrote results.json"
    assert doc["rows"][0]["speedup_over"] is not None
    md = subprocess.run([sys.executable, "-m", "bench.markdown", str(tmp_path / record.JSONL)], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert md.returncode == 0, md.stderr
    assert "| large 4K | fp32 / fp32 | AdamW |" in md.stdout


def test_time_limit_leaves_groups_out_and_says_so(tmp_path):
    """A limit already spent by the imports: no group starts, each is listed with the reason."""
    cmd = [sys.executable, "-m", "bench", *MANY_GROUPS[:-2], "--time-limit", "0.001", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / record.JSON).read_text())
    assert doc["rows"] == [] and doc["complete"] is False and doc["interrupted"] is None
    assert len(doc["cut"]) == doc["settings"]["groups"] == 24
    assert all("--time-limit" in c["reason"] for c in doc["cut"])
    assert doc["settings"]["time_limit_s"] == 0.001
    assert "Left out: 24 of 24 groups (24 not started within the --time-limit)" in proc.stdout
    assert "Nothing was measured." in proc.stdout


def test_group_limit_keeps_three_samples():
    """time_interleaved past its stop time still gives each call MIN_REPEATS samples, and says
    it stopped early; past its give-up time it stops at once."""
    import torch

    from bench.timing import MIN_REPEATS, time_interleaved

    calls = {"a": lambda: None, "b": lambda: time.sleep(0.001)}
    timings, stopped = time_interleaved(calls, torch.device("cpu"), repeats=50, budget_s=10.0, stop_at=0.0)
    assert stopped and all(len(t.samples_s) == MIN_REPEATS for t in timings.values())
    timings, stopped = time_interleaved(calls, torch.device("cpu"), repeats=4, budget_s=10.0, stop_at=None)
    assert not stopped and all(len(t.samples_s) == 4 for t in timings.values())
    # give_up_at: the rounds end even below MIN_REPEATS (measure drops such a group)
    timings, stopped = time_interleaved(calls, torch.device("cpu"), repeats=50, budget_s=10.0, give_up_at=0.0)
    assert stopped and all(len(t.samples_s) == 1 for t in timings.values())


def test_every_call_can_follow_the_yardstick():
    """before=: that call is made, and timed, right before each of the others, in every round."""
    import torch

    from bench.timing import WARMUP, time_interleaved

    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("y", "a", "b", "c")}
    timings, _ = time_interleaved(calls, torch.device("cpu"), repeats=4, budget_s=10.0, before="y")
    timed = order[4 * WARMUP:]
    assert len(timed) == 2 * 3 * 4 and timed[0::2] == ["y"] * 12
    assert sorted(timed[1::2]) == sorted(["a", "b", "c"] * 4)
    assert [len(timings[n].samples_s) for n in ("y", "a", "b", "c")] == [12, 4, 4, 4]


def test_verdicts():
    assert summary.compare(1.16, True, "torch.optim fused") == "1.16x faster than torch.optim fused"
    assert summary.compare(0.5, True, "torch.optim fused") == "2.00x slower than torch.optim fused"
    assert summary.compare(1.04, True, "X") == "the same as X (1.04x)"
    assert summary.compare(1 / 1.04, False, "X") == "the same as X (0.96x)"
    assert summary.compare(1.5, False, "X") == "not clearly different from X (1.50x, the samples' spreads overlap)"
    assert summary.verdict(1.5, apart=False) == "unclear"
    assert summary.verdict(1.06) == "faster" and summary.verdict(0.94) == "slower"


def test_summary_of_a_committed_run():
    """The summary of the committed CPU run: one line per case for AdamW, the other optimizers
    against their own peers only (torch.optim fused/foreach for Adam, not AdamW's for Adai)."""
    doc = json.loads((ROOT / "bench/results/cpu-amd-epyc-2cores.json").read_text())
    text = summary.summary(doc)
    assert "AdamW, fp32 params and states, our fastest backend:" in text
    assert "  one 16M-element tensor: fused_optim cpu is " in text
    assert "  2000 small tensors (1-4K elements each): fused_optim cpu is " in text
    adai = next(line for line in text.splitlines() if line.startswith("  Adai "))
    assert "authors' loop" in adai and "torch.optim" not in adai
    adam = next(line for line in text.splitlines() if line.startswith("  Adam "))
    assert "torch.optim fused" in adam
    assert "WARNING" not in text  # that run's machine was quiet


def test_help_does_not_import_torch():
    """--help answers before torch, fused_optim, triton or numpy are imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--time-limit" in proc.stdout and "decided after" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "bench" in imported
    assert not imported & {"torch", "fused_optim", "triton", "numpy"}


def test_readme_options_table_matches_argparse():
    readme = (ROOT / "bench/README.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\| `(--[a-z-]+)", readme, re.MULTILINE)}
    flags = {o for a in cli.parser()._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert table == flags


def test_names_agree_with_the_tables():
    assert tuple(o.name for o in impls.OPTIMIZERS) == names.OPTIMIZERS
    assert tuple(impls.DTYPES) == names.DTYPES
    assert cases.FAMILIES == names.FAMILIES


def test_plot_legend_covers_no_panel():
    pytest.importorskip("matplotlib")
    from bench import plot

    doc = json.loads((ROOT / "bench/results/cpu-amd-epyc-2cores.json").read_text())
    fig, why = plot.figure(doc)
    assert fig is not None, why
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent(renderer))
        assert ax.get_yscale() == "linear"
        for label in ax.get_yticklabels() + ax.get_xticklabels():
            assert "times" not in label.get_text() and "^" not in label.get_text()
