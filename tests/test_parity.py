"""Every optimizer x backend x dtype x layout x hyperparameter case against the fp64
reference over several steps, on params and every state tensor."""
import pytest
import torch

from fused_optim.optimizers.adai import V_SUM
from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import CPU_BACKENDS, LAYOUTS, SLOW_BACKENDS, make_params, run_with_oracle

BACKENDS = CPU_BACKENDS
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

CASES = [(name, case) for name, spec in OPTIMIZERS.items() for case in spec.cases]


# the interpreted triton backend takes the small layouts that still hold every special case
# (a transposed and a misaligned view, size 1, zero-size tensors)
BACKEND_LAYOUTS = [(b, layout) for b in BACKENDS for layout in LAYOUTS
                   if b not in SLOW_BACKENDS or layout in ("1", "views", "zero_size")]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("backend,layout", BACKEND_LAYOUTS, ids=[f"{b}-{la}" for b, la in BACKEND_LAYOUTS])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_parity_with_fp64_reference(name, case, backend, dtype, layout):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    params = make_params(layout, dtype)
    opt, oracle, oracle_params = run_with_oracle(
        lambda ps: spec.cls(ps, **kwargs, backend=backend),
        params,
        lambda ps: spec.cls(ps, **kwargs, backend="torch"),
    )
    for p, q in zip(params, oracle_params):
        tolerances.assert_param_close(name, dtype, p, q, opt.param_groups[0]["lr"])
    for p, q in zip(params, oracle_params):
        _, param_atol = tolerances.param_tolerance(name, dtype, q.detach())
        srtol, satol = tolerances.state_tolerance(name, dtype, kwargs.get("weight_decay", 0.0), param_atol)
        state, expected = opt.state[p], oracle.state[q]
        # Adai's carried sum of exp_avg_sq is the cpu backend's alone (tests/test_cpu_regimes.py)
        assert state.keys() - {V_SUM} == expected.keys()
        for key in spec.state_names:
            assert key in state
        for key, value in state.items():
            if key == V_SUM:
                continue
            if key == "step":
                assert float(value) == float(expected[key])
                continue
            # states are fp32 for bf16/fp16 params, fp64 for fp64, fp32 for fp32
            assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            torch.testing.assert_close(value.double(), expected[key].double(), rtol=srtol, atol=satol,
                                       msg=lambda m, key=key: f"state {key}: {m}")
    if hasattr(opt, "global_step"):
        assert opt.global_step == oracle.global_step
