"""bench/loaded_steps.py: the per-step statistics it reports, and a measurement of two tiny cases
(without the busy loops: tests/test_bench.py runs those through `python -m bench --load`)."""
import json

import pytest

import fused_optim
from bench import loaded_steps

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")


def test_statistics_of_known_step_times():
    times = [1e-3] * 8 + [4e-3, 10e-3]
    stats = loaded_steps._stats(times)
    assert stats["mean"] == pytest.approx(2.2e-3)
    assert stats["median"] == pytest.approx(1e-3)
    assert stats["p90"] == pytest.approx(4e-3)  # the 9th of 10 in order (nearest rank)
    two = loaded_steps._stats([1e-3, 3e-3])
    assert two["median"] == pytest.approx(2e-3) and two["p90"] == pytest.approx(3e-3)
    assert stats["stalled"] == pytest.approx(0.2)
    assert stats["steps"] == 10


def test_measure_and_report_two_tiny_cases(monkeypatch, tmp_path):
    monkeypatch.setattr(loaded_steps, "CASES", {"AdamW, 2 of 20": ("AdamW", [[20]] * 2),
                                                "Adai, 2 of 20": ("Adai", [[20]] * 2)})
    monkeypatch.setattr(loaded_steps, "BURST_S", 0.001)
    results = loaded_steps.measure(rounds=2)
    assert set(results) == {"AdamW, 2 of 20", "Adai, 2 of 20"}
    for rows in results.values():
        for side in ("ours", "fused"):
            stats = rows[side]
            assert stats["steps"] >= 2 and 0 < stats["median"] <= stats["p90"]
    lines = loaded_steps.report(results, other_cpus=0.0)
    assert len(lines) == 2 + len(results)
    adamw = results["AdamW, 2 of 20"]
    assert float(lines[2].split()[-1]) == pytest.approx(adamw["fused"]["mean"] / adamw["ours"]["mean"], abs=0.006)
    json.dumps(results)  # what --json writes
