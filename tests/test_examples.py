"""The examples run end to end (with a few steps) and write their plots: to --out, else to
./fused_optim_examples_out, never over the committed ones in examples/plots."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

# each run is a fresh interpreter importing torch (and torch._dynamo, with the first optimizer):
# ~4-6 s per example, ~20 s in all
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None

CASES = [
    ("adai_styblinski_tang", ["--steps", "20"], None),
    ("adamomentum_toy_functions", ["--steps", "5"], None),
    ("invadam_eggholder", ["--steps", "5"], None),
    ("digits_training", ["--epochs", "1"], "sklearn"),
]


@pytest.mark.parametrize("name, args, needs", CASES, ids=[c[0] for c in CASES])
def test_example_runs_and_plots(name, args, needs, tmp_path):
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{name} needs {needs}")
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if HAS_MATPLOTLIB:
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    else:
        assert "pip install matplotlib" in proc.stdout


def test_default_output_is_the_current_directory_not_the_committed_plots(tmp_path):
    committed = EXAMPLES / "plots" / "adamomentum_toy_functions.png"
    before = committed.stat().st_mtime_ns, committed.read_bytes()
    proc = subprocess.run([sys.executable, str(EXAMPLES / "adamomentum_toy_functions.py"), "--steps", "5"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (committed.stat().st_mtime_ns, committed.read_bytes()) == before
    if HAS_MATPLOTLIB:
        written = tmp_path / "fused_optim_examples_out" / "adamomentum_toy_functions.png"
        assert written.stat().st_size > 0
        assert f"plot: {written.resolve()}" in proc.stdout
