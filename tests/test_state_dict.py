"""state_dict / load_state_dict: resumed runs equal uninterrupted ones bit for bit, and
state dicts of torch.optim and of the authors' code load."""
import io

import pytest
import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, grads_for, make_params, set_grads

BACKENDS = CPU_BACKENDS
CASES = [(name, case) for name, spec in OPTIMIZERS.items() for case in spec.cases]


def _run(opt, params, steps):
    for step in steps:
        set_grads(params, grads_for(params, step))
        opt.step()


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_resume_equals_uninterrupted_run(name, case, backend, dtype):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    straight = make_params("views", dtype)
    opt = spec.cls(straight, **kwargs, backend=backend)
    _run(opt, straight, range(1, 7))

    resumed = make_params("views", dtype)
    first = spec.cls(resumed, **kwargs, backend=backend)
    _run(first, resumed, range(1, 4))
    saved = _roundtrip(first.state_dict())
    del first
    fresh = spec.cls(resumed, **kwargs, backend=backend)
    fresh.load_state_dict(saved)
    _run(fresh, resumed, range(4, 7))

    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    for a, b in zip(straight, resumed):
        sa, sb = opt.state[a], fresh.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            assert torch.equal(sa[key], sb[key]), key
    assert opt.state_dict()["param_groups"] == fresh.state_dict()["param_groups"]


def test_dualadam_global_step_is_saved_and_restored():
    params = make_params("7", torch.float32)
    opt = fused_optim.DualAdam(params, switch_rate=0.3)
    _run(opt, params, range(1, 4))
    opt.step()  # no grads: the global step still advances (spec)
    sd = opt.state_dict()
    assert sd["global_step"] == 4
    fresh = fused_optim.DualAdam(params, switch_rate=0.3)
    fresh.load_state_dict(sd)
    assert fresh.global_step == 4


def test_dualadam_authors_state_dict_without_global_step_warns():
    params = make_params("7", torch.float32)
    opt = fused_optim.DualAdam(params)
    _run(opt, params, [1])
    sd = opt.state_dict()
    del sd["global_step"]
    sd["state"] = {k: {"m": s["exp_avg"], "v": s["exp_avg_sq"]} for k, s in sd["state"].items()}
    fresh = fused_optim.DualAdam(params)
    with pytest.warns(RuntimeWarning, match="global_step"):
        fresh.load_state_dict(sd)
    assert torch.equal(fresh.state[params[0]]["exp_avg"], opt.state[params[0]]["exp_avg"])
    assert fresh.global_step == 0


@pytest.mark.parametrize("where", ["top", "groups"])
def test_dualadam_optimizer_level_step_of_other_code_is_read(where):
    """A single counter saved by other code, as a top-level "step" or in the param groups,
    restores the global step (and the run continues exactly)."""
    params = make_params("7", torch.float64)
    opt = fused_optim.DualAdam(params, switch_rate=0.3)
    _run(opt, params, [1, 2])
    sd = opt.state_dict()
    steps = sd.pop("global_step")
    sd["state"] = {k: {"m": s["exp_avg"], "v": s["exp_avg_sq"]} for k, s in sd["state"].items()}
    if where == "top":
        sd["step"] = steps
    else:
        for group in sd["param_groups"]:
            group["step"] = steps
    twin = [p.detach().clone().requires_grad_() for p in params]
    fresh = fused_optim.DualAdam(twin, switch_rate=0.3)
    fresh.load_state_dict(sd)
    assert fresh.global_step == 2 and "step" not in fresh.param_groups[0]
    _run(opt, params, [3])
    _run(fresh, twin, [3])
    assert all(torch.equal(p, q) for p, q in zip(params, twin))


def test_adamomentum_loads_authors_state_keys():
    params = make_params("7", torch.float32)
    opt = fused_optim.AdaMomentum(params, amsgrad=True)
    _run(opt, params, [1, 2])
    sd = opt.state_dict()
    renamed = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_var", "max_exp_avg_sq": "max_exp_avg_var"}
    sd["state"] = {k: {renamed.get(n, n): (int(v) if n == "step" else v) for n, v in s.items()}
                   for k, s in sd["state"].items()}
    fresh = fused_optim.AdaMomentum(params, amsgrad=True)
    fresh.load_state_dict(sd)
    state = fresh.state[params[0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert float(state["step"]) == 2.0
    assert torch.equal(state["exp_avg_sq"], opt.state[params[0]]["exp_avg_sq"])


@pytest.mark.parametrize("ours,theirs", [(fused_optim.Adam, torch.optim.Adam), (fused_optim.AdamW, torch.optim.AdamW)])
def test_torch_optim_state_dicts_load_both_ways(ours, theirs):
    params = make_params("4097", torch.float32)
    twins = [p.detach().clone().requires_grad_() for p in params]
    ref = theirs(twins, amsgrad=True, foreach=False)
    _run(ref, twins, [1, 2])
    opt = ours(params, amsgrad=True)
    with torch.no_grad():
        for p, q in zip(params, twins):
            p.copy_(q)
    opt.load_state_dict(ref.state_dict())
    _run(opt, params, [3, 4])
    _run(ref, twins, [3, 4])
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    back = theirs([p.detach().clone().requires_grad_() for p in params], amsgrad=True, foreach=False)
    back.load_state_dict(opt.state_dict())
    assert float(next(iter(back.state.values()))["step"]) == 4.0


def test_loading_does_not_alias_the_given_state_dict():
    params = make_params("7", torch.float32)
    opt = fused_optim.Adai(params, lr=0.1)
    _run(opt, params, [1])
    sd = opt.state_dict()
    before = {k: v.clone() for k, v in sd["state"][0].items()}
    other = fused_optim.Adai([p.detach().clone().requires_grad_() for p in params], lr=0.1)
    other.load_state_dict(sd)
    _run(other, other.param_groups[0]["params"], [2])
    for key, value in sd["state"][0].items():
        assert torch.equal(value, before[key]), key


def test_low_precision_params_keep_fp32_states_after_loading():
    params = make_params("7", torch.bfloat16)
    opt = fused_optim.AdamW(params)
    _run(opt, params, [1])
    fresh = fused_optim.AdamW(params)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[params[0]]["exp_avg"].dtype == torch.float32
    assert torch.equal(fresh.state[params[0]]["exp_avg"], opt.state[params[0]]["exp_avg"])


def test_state_of_the_wrong_shape_is_rejected_before_loading():
    params = make_params("7", torch.float32)
    opt = fused_optim.Adam(params)
    _run(opt, params, [1])
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(8)
    fresh = fused_optim.Adam(params)
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(sd)
    assert len(fresh.state) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_step_types_are_converted(backend):
    """Steps written as ints (the authors' code) or int/double tensors continue correctly."""
    params = make_params("7", torch.float32)
    opt = fused_optim.AdaMomentum(params, backend=backend)
    _run(opt, params, [1, 2])
    reference = [p.detach().clone() for p in params]
    for step_value in (2, torch.tensor(2), torch.tensor(2.0, dtype=torch.float64)):
        twin = [p.detach().clone().requires_grad_() for p in reference]
        other = fused_optim.AdaMomentum(twin, backend=backend)
        sd = opt.state_dict()
        sd["state"][0]["step"] = step_value
        other.load_state_dict(sd)
        other.state[twin[0]]["step"] = step_value  # as a user might write it after loading
        _run(other, twin, [3])
        assert float(other.state[twin[0]]["step"]) == 3.0
        assert other.state[twin[0]]["step"].dtype == torch.float32


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_resume_on_another_backend(name, case):
    """Saved on one backend, continued on the other: the same run up to the two backends'
    fp32 rounding (they order a few operations differently)."""
    if "cpu" not in BACKENDS:
        pytest.skip("the native cpu backend is not built")
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    for first, second in (("cpu", "torch"), ("torch", "cpu")):
        straight = make_params("4097", torch.float32)
        opt = spec.cls(straight, **kwargs, backend=first)
        _run(opt, straight, range(1, 7))
        resumed = make_params("4097", torch.float32)
        early = spec.cls(resumed, **kwargs, backend=first)
        _run(early, resumed, range(1, 4))
        moved = spec.cls(resumed, **kwargs, backend=second)
        moved.load_state_dict(_roundtrip(early.state_dict()))
        _run(moved, resumed, range(4, 7))
        for a, b in zip(straight, resumed):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ours,theirs", [("Adai", "AuthorsAdai"), ("AdaMomentum", "AuthorsAdaMomentum")])
def test_authors_state_dicts_load_and_continue(ours, theirs, backend):
    """A run started with the authors'-structure optimizer (their state keys, int steps)
    continues in ours as if it had never changed optimizer (fp64)."""
    from fused_optim.reference import authors

    kwargs = OPTIMIZERS[ours].cases["default"]
    params = make_params("4097", torch.float64)
    twins = [p.detach().clone().requires_grad_() for p in params]
    theirs_opt = getattr(authors, theirs)(params, **kwargs)
    _run(theirs_opt, params, [1, 2, 3])
    with torch.no_grad():
        for p, q in zip(params, twins):
            q.copy_(p)
    ours_opt = getattr(fused_optim, ours)(twins, **kwargs, backend=backend)
    ours_opt.load_state_dict(_roundtrip(theirs_opt.state_dict()))
    _run(theirs_opt, params, [4, 5])
    _run(ours_opt, twins, [4, 5])
    for p, q in zip(params, twins):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-15)
