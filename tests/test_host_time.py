"""python -m bench.host_time: the quick stubbed run in a subprocess, its JSON checked for every
row with positive finite times, and proof that the stubs swallowed the launches (counted
calls, params unchanged) while torch's peers really stepped. No timing is asserted: the
machine may be busy."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import host_time
from fused_optim import backends, cuda_backend, triton_backend
from fused_optim.registry import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]
QUICK_STEPS = 1 + 3  # --quick: one warm-up step and three samples per row


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("host_time") / "host_time.json"
    cmd = [sys.executable, "-m", "bench.host_time", "--quick", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stubbed mode" in proc.stdout
    return json.loads(out.read_text())


def _expected_backends():
    """The backends whose rows must be measured: the cuda one where fused_optim._cuda was built."""
    return [b for b in host_time.BACKENDS
            if (b == "cuda" and cuda_backend._cuda is not None) or (b == "triton" and triton_backend._IMPORT_ERROR is None)]


def test_every_row_is_there_with_positive_finite_times(doc):
    assert doc["schema"] == host_time.SCHEMA and doc["mode"] == "stubbed" and doc["device_name"]
    assert len(doc["cases"]) == 2
    expected = [f"{name} {b}" for name in OPTIMIZERS for b in _expected_backends()] + list(host_time.PEERS)
    for case in doc["cases"]:
        labels = [r["label"] for r in case["rows"]]
        assert labels == expected, case["skipped"]
        assert {s["label"] for s in case["skipped"]} | set(labels) == {
            f"{name} {b}" for name in OPTIMIZERS for b in host_time.BACKENDS} | set(host_time.PEERS)
        for row in case["rows"]:
            times = [row["median_s"], row["ms_per_step"], row["us_per_tensor"], *row["samples_s"]]
            assert all(math.isfinite(t) and t > 0 for t in times), row
            assert len(row["samples_s"]) == 3
            assert math.isfinite(row["ratio_to_torch_fused"]) and row["ratio_to_torch_fused"] > 0


def test_stubs_swallowed_every_launch_and_torch_stepped(doc):
    for case in doc["cases"]:
        for row in case["rows"]:
            if row["impl"] in host_time.BACKENDS:
                # at least one launch per step reached the stub, and nothing wrote the params
                assert row["stub_calls"] >= QUICK_STEPS, row["label"]
                assert not row["params_changed"], row["label"]
            else:  # the check does see writes
                assert row["stub_calls"] == 0 and row["params_changed"], row["label"]


def test_stubs_are_undone_on_exit():
    """In-process: the patched module attributes and the backends' caches are restored."""
    watched = [(cuda_backend, "_cuda"), (cuda_backend, "_steps"), (backends, "serves")]
    if triton_backend._IMPORT_ERROR is None:
        watched += [(triton_backend._mt, "launch"), (triton_backend._mt, "INTERPRETED"),
                    (triton_backend, "_host_steps")]
    before = [getattr(owner, name) for owner, name in watched]
    implementations = dict(backends._implementations)
    availability = {b: backends.availability(b) for b in host_time.BACKENDS}
    with host_time.kernels_stubbed(host_time.LaunchCounter()):
        pass
    assert [getattr(owner, name) for owner, name in watched] == before
    assert backends._implementations == implementations
    assert {b: backends.availability(b) for b in host_time.BACKENDS} == availability


@pytest.mark.skipif(cuda_backend._cuda is None, reason="fused_optim._cuda was not built here")
def test_cuda_stub_refuses_counters_read_on_the_device():
    """The stub swallows a Call whose counters were read on the host (as next to CUDA params)
    and refuses one that carries counter addresses: a stubbed run that took the other path
    would measure host work a GPU step does not do."""
    real, counter = cuda_backend._cuda, host_time.LaunchCounter()
    stub = host_time.CudaModuleWithoutLaunches(real, counter)
    stub.step("adam_step", real.Call(lists=[[1 << 20]], numels=[4], steps=[0.0]), {})
    assert counter.calls == 1
    with pytest.raises(RuntimeError, match="step counter addresses"):
        stub.step("lion_step", real.Call(lists=[[1 << 20]], numels=[4], step_addresses=[1 << 21]), {})
