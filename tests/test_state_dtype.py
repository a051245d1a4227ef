"""state_dtype=torch.bfloat16: states (moments, max_exp_avg_sq; Adai's beta1_prod stays fp32)
stored in bf16 with fp32 math, against the fp64 reference, on every backend that serves it; and how
the option is checked, saved and refused."""
import pytest
import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import CPU_BACKENDS, SLOW_BACKENDS, grads_for, make_params, run_with_oracle, set_grads

BACKENDS = [b for b in CPU_BACKENDS if fused_optim.backends.serves(b, torch.device("cpu"), torch.bfloat16)[0]]
BACKEND_LAYOUTS = [(b, layout) for b in BACKENDS for layout in ("4097", "views")
                   if b not in SLOW_BACKENDS or layout == "views"]
CASES = [(name, case) for name, spec in OPTIMIZERS.items() for case in spec.cases]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("backend,layout", BACKEND_LAYOUTS, ids=[f"{b}-{la}" for b, la in BACKEND_LAYOUTS])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_bf16_states_against_fp64_reference(name, case, backend, dtype, layout):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    params = make_params(layout, dtype)
    initial = [p.detach().double().clone() for p in params]
    opt, oracle, oracle_params = run_with_oracle(
        lambda ps: spec.cls(ps, **kwargs, backend=backend, state_dtype=torch.bfloat16),
        params,
        lambda ps: spec.cls(ps, **kwargs, backend="torch"),
    )
    for p, q, p0 in zip(params, oracle_params, initial):
        rtol, atol = tolerances.bf16_state_param_tolerance(name, dtype, q.detach(), p0)
        tolerances.assert_param_close(name, dtype, p, q, opt.param_groups[0]["lr"], rtol, atol,
                                      flip_share=tolerances.LION_BF16_STATE_FLIP_SHARE)
        for key, value in opt.state[p].items():
            if key == "step":
                continue
            assert value.dtype == (torch.float32 if key in spec.cls.math_dtype_states else torch.bfloat16), key
            expected = oracle.state[q][key]
            rtol, atol = tolerances.bf16_state_tolerance(expected)
            torch.testing.assert_close(value.double(), expected, rtol=rtol, atol=atol,
                                       msg=lambda m, key=key: f"state {key}: {m}")


def test_bf16_states_are_not_an_fp32_run():
    """The option takes effect: the states are rounded every step, so results differ from an
    fp32-state run (the tolerance test above cannot tell a silently ignored option)."""
    params = make_params("4097", torch.float32)
    twin = [p.detach().clone().requires_grad_() for p in params]
    a = fused_optim.AdamW(params, backend="torch", state_dtype=torch.bfloat16)
    b = fused_optim.AdamW(twin, backend="torch")
    for step in (1, 2):
        set_grads(params, grads_for(params, step))
        set_grads(twin, grads_for(twin, step))
        a.step()
        b.step()
    assert a.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    assert not torch.equal(params[0], twin[0])


def test_adai_keeps_beta1_prod_in_fp32():
    """bf16 has no value in (1 - 2^-9, 1), so a bf16 beta1_prod after a step with beta1 near
    1 - eps would be exactly 1 and the update would divide by zero; in fp32 it is not."""
    assert torch.tensor(0.999).bfloat16().item() == 1.0
    params = make_params("4097", torch.float32)
    opt = fused_optim.Adai(params, lr=0.1, state_dtype=torch.bfloat16, backend="torch")
    grads = grads_for(params, 1)
    grads[0][:10] = 0  # vhat 0 there: beta1 = 1 - beta0 * 0 clamps to 1 - eps = 0.999
    set_grads(params, grads)
    opt.step()
    state = opt.state[params[0]]
    assert state["beta1_prod"].dtype == torch.float32 and state["exp_avg"].dtype == torch.bfloat16
    assert torch.all(state["beta1_prod"][:10] == torch.tensor(0.999))
    assert torch.isfinite(params[0]).all()


def test_fp64_params_refuse_bf16_states():
    with pytest.raises(ValueError, match="fp64 params keep fp64 states"):
        fused_optim.Adam(make_params("7", torch.float64), state_dtype=torch.bfloat16)


@pytest.mark.parametrize("state_dtype", [torch.float16, torch.float64, "bf16"])
def test_unsupported_state_dtype_is_refused(state_dtype):
    with pytest.raises(ValueError, match="state_dtype"):
        fused_optim.Adai(make_params("7", torch.float32), lr=0.1, state_dtype=state_dtype)


def test_cpu_backend_says_it_does_not_serve_bf16_states():
    if not fused_optim.availability("cpu")[0]:
        pytest.skip("no native CPU module in this install")
    with pytest.raises(fused_optim.BackendUnavailable, match="state_dtype"):
        fused_optim.Adam(make_params("7", torch.float32), backend="cpu", state_dtype=torch.bfloat16)


def test_state_dict_round_trip_keeps_bf16_states():
    params = make_params("7", torch.float32)
    opt = fused_optim.AdaMomentum(params, amsgrad=True, backend="torch", state_dtype=torch.bfloat16)
    set_grads(params, grads_for(params, 1))
    opt.step()
    fresh = fused_optim.AdaMomentum(params, amsgrad=True, backend="torch")
    fresh.load_state_dict(opt.state_dict())  # the saved groups carry state_dtype
    assert fresh.param_groups[0]["state_dtype"] == torch.bfloat16
    for key, value in fresh.state[params[0]].items():
        if key != "step":
            assert value.dtype == torch.bfloat16
            assert torch.equal(value, opt.state[params[0]][key])
