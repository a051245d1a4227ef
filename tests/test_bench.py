"""Smoke test of the benchmark's command line (python -m bench): a tiny run in a subprocess,
its results.json checked against the schema documented in bench/README.md. No timing is
asserted: the machine may be busy."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fused_optim

ROOT = Path(__file__).resolve().parents[1]

ENV_KEYS = {"date": str, "device": str, "device_name": str, "cpu_model": str, "logical_cpus": int, "threads": int,
            "versions": dict, "backends": dict, "git_revision": (str, type(None)), "git_dirty": (bool, type(None)),
            "other_cpus_busy": dict, "wall_s": float}
ROW_KEYS = {"case": str, "family": str, "tensors": int, "elements": int, "param_dtype": str, "state_dtype": str,
            "optimizer": str, "impl": str, "label": str, "impl_param_dtype": str, "impl_state_dtype": str,
            "hyperparameters": dict, "bytes_per_element": int, "median_s": float, "q1_s": float, "q3_s": float,
            "min_s": float, "max_s": float, "samples_s": list, "gbps": float, "pct_yardstick": float,
            "compile_s": (float, type(None)), "yardstick": dict, "speedup_over": dict}
YARD_KEYS = {"op", "bytes_per_element", "numel", "median_s", "q1_s", "q3_s", "min_s", "max_s", "gbps"}


def _check(obj, keys):
    for key, kind in keys.items():
        assert key in obj, key
        assert isinstance(obj[key], kind), (key, obj[key])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--optimizers", "AdamW,Adai",
           "--cases", "large,llama", "--sizes", "4096", "--dtype", "fp32,bf16", "--repeats", "3", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), proc.stdout, out


def test_schema(run):
    doc, _, _ = run
    assert doc["schema"] == "fused_optim.bench/2"
    _check(doc["environment"], ENV_KEYS)
    assert {"torch", "fused_optim", "numpy", "triton"} <= set(doc["environment"]["versions"])
    assert doc["settings"]["optimizers"] == ["AdamW", "Adai"]
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
    assert "yardstick" in stdout and "x fused" in stdout
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
           "--clip", "0.5", "--out", str(tmp_path)]
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
           "--precision", "master_weights,param_remainders,stochastic_rounding", "--out", str(tmp_path)]
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
