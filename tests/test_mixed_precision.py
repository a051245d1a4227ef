"""master_weights, param_remainders and stochastic_rounding for bf16/fp16 params
(fused_optim/optimizers/_mixed_precision.py), on every backend that updates CPU tensors here."""
import math

import pytest
import torch

from fused_optim.optimizers import _mixed_precision as mixed
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, SLOW_BACKENDS, grads_for, needs_compiled_step

NAMES = list(OPTIMIZERS)


def _cases():
    """Every optimizer on the fast backends; the interpreted triton backend on two."""
    out = []
    for backend in CPU_BACKENDS:
        for name in NAMES if backend not in SLOW_BACKENDS else ["AdamW", "Adai"]:
            out.append((name, backend))
    return out


CASES = _cases()
IDS = [f"{n}-{b}" for n, b in CASES]


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(33, 7), (129,), (4, 4, 3)]
    return [(torch.randn(s, generator=g, dtype=torch.float64) * 0.05).to(dtype).requires_grad_() for s in shapes]


def _kwargs(name):
    return dict(OPTIMIZERS[name].cases["default"])


def _train(opt, params, steps, seed=1):
    for step in range(1, steps + 1):
        for p, g in zip(params, grads_for(params, step, seed)):
            p.grad = g
        opt.step()


def _bits_equal(a, b):
    return torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a, b.view(torch.int16)
                       if b.dtype == torch.bfloat16 else b)


# ----- the bit-level helpers --------------------------------------------------------------------

def _special_values():
    tie = torch.tensor([0x3F808000, 0x3F818000, -0x40800000 + 0x8000, 0x00008000, 0x7F7F8000],
                       dtype=torch.int64)  # low halves exactly 0x8000: ties, both parities
    tie = torch.where(tie >= 0x80000000, tie - 0x100000000, tie).to(torch.int32).view(torch.float32)
    plain = torch.tensor([0.0, -0.0, 1.0, -1.5, 1e-40, -1e-40, 3.3e38, -3.4e38, math.inf, -math.inf])
    return torch.cat([tie, plain, torch.randn(10000) * 10.0 ** torch.randint(-30, 30, (10000,)).float()])


def test_split_and_join_are_exact():
    x = _special_values()
    param, remainder = mixed.split(x)
    assert param.dtype == torch.bfloat16 and remainder.dtype == torch.int16
    assert torch.equal(mixed.join(param, remainder).view(torch.int32), x.view(torch.int32))
    nan = torch.tensor([math.nan, -math.nan])
    p, r = mixed.split(nan)
    assert torch.isnan(p.float()).all() and torch.isnan(mixed.join(p, r)).all()


def test_round_nearest_is_nearest_with_ties_away_from_zero():
    x = _special_values()
    rounded = mixed.round_nearest(x, torch.bfloat16)
    finite = torch.isfinite(rounded.float()) & torch.isfinite(x)
    # against torch's round-to-nearest-even: equal except on ties, which go away from zero
    rne = x.to(torch.bfloat16)
    low = x.view(torch.int32) & 0xFFFF
    differs = rounded.view(torch.int16) != rne.view(torch.int16)
    assert bool((low[differs] == 0x8000).all())
    assert bool((rounded.float()[differs].abs() > x[differs].abs()).all())
    # never farther than half an ulp
    err = (rounded.float().double() - x.double()).abs()
    # the bf16 ulp at the rounded value (8 significant bits; subnormals below 2^-126)
    exponent = torch.floor(torch.log2(rounded.float().double().abs())).clamp(min=-126)
    ulp = torch.pow(2.0, exponent - 7)
    assert bool((err[finite] <= ulp[finite] / 2).all())


def test_stochastic_rounding_is_unbiased_and_deterministic():
    x = torch.tensor([1.0 + 2 ** -9, 1.0 + 3 * 2 ** -10, -0.3, 1e-3, 123.456])
    draws = torch.stack([mixed.round_stochastic(x, 7, torch.tensor(float(s)), 0).float() for s in range(4000)])
    lower = x.to(torch.bfloat16).float()
    ulp = 2.0 ** (torch.floor(torch.log2(x.abs())) - 7)
    # each draw is one of the two neighbours; the mean is within 5 sigma of x
    # (sigma <= ulp / 2 / sqrt(n) for a two-point distribution)
    assert bool(((draws - x).abs() < ulp).all())
    assert bool(((draws.mean(0) - x).abs() <= 5 * ulp / 2 / math.sqrt(len(draws))).all()), (draws.mean(0), x, lower)
    again = mixed.round_stochastic(x, 7, torch.tensor(3.0), 0)
    assert _bits_equal(again, mixed.round_stochastic(x, 7, torch.tensor(3.0), 0))
    other = torch.stack([mixed.round_stochastic(x, seed, torch.tensor(3.0), 0).float() for seed in range(64)])
    assert not bool((other == other[0]).all())


# ----- the optimizers ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,backend", CASES, ids=IDS)
def test_master_weights_follow_the_fp32_run(name, backend):
    """A bf16 run with master weights keeps the masters an fp32 run of the same optimizer and
    grads has (bitwise: same kernels, same fp32 inputs), and its params are those masters
    rounded to nearest."""
    steps = 50 if backend not in SLOW_BACKENDS else 8
    bf16 = _params(torch.bfloat16)
    fp32 = [p.detach().float().requires_grad_() for p in bf16]
    spec = OPTIMIZERS[name]
    opt = spec.cls(bf16, **_kwargs(name), backend=backend, master_weights=True)
    ref = spec.cls(fp32, **_kwargs(name), backend=backend)
    for step in range(1, steps + 1):
        grads = grads_for(bf16, step)
        for p, q, g in zip(bf16, fp32, grads):
            p.grad, q.grad = g, g.float()
        opt.step()
        ref.step()
    for p, q in zip(bf16, fp32):
        master = opt.state[p]["master_param"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, q.detach(), rtol=0, atol=0)
        assert _bits_equal(p.detach(), mixed.round_nearest(master, torch.bfloat16))


@pytest.mark.parametrize("name,backend", CASES, ids=IDS)
def test_remainders_equal_master_weights_bit_for_bit(name, backend):
    steps = 20 if backend not in SLOW_BACKENDS else 4
    a, b = _params(torch.bfloat16), _params(torch.bfloat16)
    spec = OPTIMIZERS[name]
    with_masters = spec.cls(a, **_kwargs(name), backend=backend, master_weights=True)
    with_remainders = spec.cls(b, **_kwargs(name), backend=backend, param_remainders=True)
    _train(with_masters, a, steps)
    _train(with_remainders, b, steps)
    for p, q in zip(a, b):
        assert _bits_equal(p.detach(), q.detach())
        state_a, state_b = with_masters.state[p], with_remainders.state[q]
        assert state_b["param_remainder"].dtype == torch.int16 and "master_param" not in state_b
        assert torch.equal(mixed.join(q.detach(), state_b["param_remainder"]), state_a["master_param"])
        for key in state_a:
            if key != "master_param":
                assert torch.equal(state_a[key], state_b[key]), key


def test_master_weights_serve_fp16_and_ignore_fp32():
    spec = OPTIMIZERS["AdamW"]
    half = _params(torch.float16)
    full = [p.detach().float().requires_grad_() for p in half]
    opt = spec.cls(half, backend="torch", master_weights=True)
    ref = spec.cls(full, backend="torch")
    for step in range(1, 6):
        for p, q, g in zip(half, full, grads_for(half, step)):
            p.grad, q.grad = g, g.float()
        opt.step()
        ref.step()
    for p, q in zip(half, full):
        assert torch.equal(opt.state[p]["master_param"], q.detach())
        assert torch.equal(p.detach(), q.detach().half())
    plain = _params(torch.float32)
    opt = spec.cls(plain, backend="torch", master_weights=True)
    _train(opt, plain, 2)
    assert all("master_param" not in opt.state[p] for p in plain)


def test_small_updates_stall_in_bf16_but_not_with_masters_or_stochastic_rounding():
    """AdamW with lr 1e-4 on params near 1 (bf16 ulp 2^-7): each step moves them by ~lr, far
    below half an ulp. Plain bf16 loses every step; master weights keep them; stochastic
    rounding moves the params by the right amount on average."""
    def run(**options):
        p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
        opt = OPTIMIZERS["AdamW"].cls([p], lr=1e-4, weight_decay=0.0, backend="torch", **options)
        for _ in range(100):
            p.grad = torch.full_like(p, 0.1)
            opt.step()
        return p.detach().float()

    plain = run()
    masters = run(master_weights=True)
    rounded = run(stochastic_rounding=True, seed=3)
    assert torch.equal(plain, torch.ones_like(plain))  # stalled: 100 steps lost
    # Adam's normalized step is ~lr: the masters moved by ~100 lr = 0.01, over an ulp
    assert bool((masters < 1 - 0.5 * 2 ** -7).all())
    expected = 1 - 100 * 1e-4  # the fp32 trajectory, to within Adam's eps
    # the mean of 4096 independent roundings: sigma <= ulp / 2 / 64 per step's rounding,
    # accumulated over the steps it stays within a few ulp / 64
    assert abs(float(rounded.mean()) - expected) < 2 ** -7 / 8
    assert float(rounded.std()) > 0  # the params really differ


@pytest.mark.parametrize("option", ["master_weights", "param_remainders", "stochastic_rounding"])
def test_state_dict_round_trip(option):
    spec = OPTIMIZERS["Adai"]
    a, b = _params(torch.bfloat16), _params(torch.bfloat16)
    whole = spec.cls(a, **_kwargs("Adai"), backend="torch", **{option: True})
    _train(whole, a, 6)
    first = spec.cls(b, **_kwargs("Adai"), backend="torch", **{option: True})
    _train(first, b, 3)
    saved = first.state_dict()
    c = [p.detach().clone().requires_grad_() for p in b]
    second = spec.cls(c, **_kwargs("Adai"), backend="torch", **{option: True})
    second.load_state_dict(saved)
    for step in range(4, 7):
        for p, g in zip(c, grads_for(c, step)):
            p.grad = g
        second.step()
    for p, q in zip(a, c):
        assert _bits_equal(p.detach(), q.detach())
        for key, value in whole.state[p].items():
            assert torch.equal(value, second.state[q][key]), key


def test_a_checkpoint_without_masters_builds_them_from_the_params():
    spec = OPTIMIZERS["AdamW"]
    a = _params(torch.bfloat16)
    plain = spec.cls(a, backend="torch")
    _train(plain, a, 2)
    b = [p.detach().clone().requires_grad_() for p in a]
    opt = spec.cls(b, backend="torch", master_weights=True)
    opt.load_state_dict(plain.state_dict())
    assert all("master_param" not in opt.state[p] for p in b)
    for p, g in zip(b, grads_for(b, 3)):
        p.grad = g
    opt.step()
    for p in b:
        assert opt.state[p]["master_param"].dtype == torch.float32
        assert _bits_equal(p.detach(), mixed.round_nearest(opt.state[p]["master_param"], torch.bfloat16))


@pytest.mark.parametrize("dtype,options,error", [
    (torch.float32, dict(param_remainders=True), ValueError),
    (torch.float16, dict(param_remainders=True), ValueError),
    (torch.float16, dict(stochastic_rounding=True), ValueError),
    (torch.bfloat16, dict(stochastic_rounding=True, master_weights=True), ValueError),
    (torch.bfloat16, dict(master_weights=True, param_remainders=True), ValueError),
    (torch.bfloat16, dict(master_weights=1), TypeError),
    (torch.bfloat16, dict(stochastic_rounding=True, seed=1.5), TypeError),
])
def test_options_the_dtype_does_not_allow_raise(dtype, options, error):
    with pytest.raises(error):
        OPTIMIZERS["AdamW"].cls(_params(dtype), backend="torch", **options)


def test_a_skipped_step_changes_nothing():
    """GradScaler's found_inf: masters, remainders and params stay as they were."""
    for option in ("master_weights", "param_remainders", "stochastic_rounding"):
        params = _params(torch.bfloat16)
        opt = OPTIMIZERS["AdamW"].cls(params, backend="torch", **{option: True})
        _train(opt, params, 2)
        before = [p.detach().clone() for p in params]
        states = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
        for p, g in zip(params, grads_for(params, 3)):
            p.grad = g
        opt.found_inf = torch.ones(())
        opt.step()
        del opt.found_inf
        for p, b, s in zip(params, before, states):
            assert _bits_equal(p.detach(), b)
            for key, value in s.items():
                assert torch.equal(opt.state[p][key], value), (option, key)


@needs_compiled_step
@pytest.mark.parametrize("option", ["master_weights", "param_remainders", "stochastic_rounding"])
def test_compiled_step_equals_eager(option):
    """torch.compile(opt.step, fullgraph=True) with the option on (the remainders' split and
    join are opaque operators there: inductor cannot compile their bit views)."""
    p = _params(torch.bfloat16)
    q = [t.detach().clone().requires_grad_() for t in p]
    eager = OPTIMIZERS["AdamW"].cls(p, backend="torch", **{option: True})
    compiled = OPTIMIZERS["AdamW"].cls(q, backend="torch", **{option: True})
    step = torch.compile(compiled.step, fullgraph=True)
    for s in range(1, 4):
        for a, b, g in zip(p, q, grads_for(p, s)):
            a.grad, b.grad = g, g.clone()
        eager.step()
        step()
    for a, b in zip(p, q):
        assert _bits_equal(a.detach(), b.detach())


def test_an_option_changed_in_a_group_is_checked_before_the_step_changes_anything():
    """The options are group entries (like lr): a combination set after construction that the
    params' dtype does not allow raises at step(), with params and state untouched."""
    params = _params(torch.float16)
    opt = OPTIMIZERS["AdamW"].cls(params, backend="torch", master_weights=True)
    _train(opt, params, 1)
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    opt.param_groups[0]["master_weights"] = False
    opt.param_groups[0]["param_remainders"] = True
    for p, g in zip(params, grads_for(params, 2)):
        p.grad = g
    with pytest.raises(ValueError, match="bfloat16"):
        opt.step()
    for p, b, s in zip(params, before, states):
        assert torch.equal(p.detach(), b)
        assert s.keys() == opt.state[p].keys()
        assert all(torch.equal(opt.state[p][k], v) for k, v in s.items())


# ----- the cpu backend's fused pass -------------------------------------------------------------

OPTIONS = ("master_weights", "param_remainders", "stochastic_rounding")
FUSED_CASES = ([("cpu", name, option) for name in NAMES for option in OPTIONS] if "cpu" in CPU_BACKENDS else []) + \
    ([("triton", name, option) for name in ("AdamW", "AdaMomentum", "DualAdam", "Adai", "Lion") for option in OPTIONS]
     if "triton" in CPU_BACKENDS else [])


@pytest.mark.parametrize("clip", [None, 0.05], ids=["plain", "clipped"])
@pytest.mark.parametrize("backend,name,option", FUSED_CASES, ids=[f"{b}-{n}-{o}" for b, n, o in FUSED_CASES])
def test_fused_pass_equals_the_unfused_path(backend, name, option, clip, monkeypatch):
    """The cpu and triton kernels keep masters/remainders/stochastic rounding in their one pass
    (the cuda kernels: tests/test_cuda_backend.py); they give the bits the unfused path gives
    (fp32 copies through the same kernels, params written back after), params and every state,
    with L2 for Adai (its pass 1 reads the master's p)."""
    from fused_optim import operations
    from fused_optim._param_storage import OPTION_MODES, PLAIN

    kwargs = dict(OPTIMIZERS[name].cases.get("l2", OPTIMIZERS[name].cases["default"]), backend=backend,
                  max_grad_norm=clip, **{option: True})
    fused_params, plain_params = _params(torch.bfloat16), _params(torch.bfloat16)
    fused = OPTIMIZERS[name].cls(fused_params, **kwargs)
    plain = OPTIMIZERS[name].cls(plain_params, **kwargs)
    modes = []
    call = operations._Call.__call__

    def recording(self, *args, storage=None, **kwargs):
        modes.append(PLAIN if storage is None else storage.mode)
        return call(self, *args, storage=storage, **kwargs)

    monkeypatch.setattr(operations._Call, "__call__", recording)
    steps = 6 if backend == "cpu" else 3
    _train(fused, fused_params, steps)
    assert modes and set(modes) == {OPTION_MODES[option]}  # the fused pass served every call
    monkeypatch.setattr(mixed, "FUSED_BACKENDS", ())
    modes.clear()
    _train(plain, plain_params, steps)
    assert set(modes) == {PLAIN}
    for p, q in zip(fused_params, plain_params):
        assert _bits_equal(p.detach(), q.detach())
        for key, value in fused.state[p].items():
            assert torch.equal(value, plain.state[q][key]), key


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the native cpu backend is not built")
def test_cpu_fused_master_weights_serve_fp16():
    fused_params, plain_params = _params(torch.float16), _params(torch.float16)
    fused = OPTIMIZERS["Adam"].cls(fused_params, backend="cpu", master_weights=True)
    plain = OPTIMIZERS["Adam"].cls(plain_params, backend="torch", master_weights=True)
    _train(fused, fused_params, 5)
    _train(plain, plain_params, 5)
    for p, q in zip(fused_params, plain_params):
        # the torch backend's fp32 math rounds as the kernels do here (same ops, same order)
        torch.testing.assert_close(fused.state[p]["master_param"], plain.state[q]["master_param"],
                                   rtol=2e-6, atol=1e-9)
        assert torch.equal(p.detach(), fused.state[p]["master_param"].to(torch.float16))


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the native cpu backend is not built")
def test_cpu_fused_rounding_of_special_masters():
    """Ties (rounded away from zero), NaN, infinities and subnormals through the kernels'
    own rounding: a step that leaves every master as it is (lr 0, zero grads) must write the
    params round_nearest gives, and split them into the remainders split gives."""
    masters = _special_values()
    p = masters.to(torch.bfloat16).requires_grad_()
    q = masters.to(torch.bfloat16).requires_grad_()
    with_masters = OPTIMIZERS["AdamW"].cls([p], lr=0.0, backend="cpu", master_weights=True)
    with_remainders = OPTIMIZERS["AdamW"].cls([q], lr=0.0, backend="cpu", param_remainders=True)
    for opt, t in ((with_masters, p), (with_remainders, q)):
        t.grad = torch.zeros_like(t)
        opt.step()  # makes the states
    with torch.no_grad():
        with_masters.state[p]["master_param"].copy_(masters)
        param, remainder = mixed.split(masters)
        q.copy_(param)
        with_remainders.state[q]["param_remainder"].copy_(remainder)
    with_masters.step()
    with_remainders.step()
    assert _bits_equal(p.detach(), mixed.round_nearest(masters, torch.bfloat16))
    assert _bits_equal(q.detach(), param)
    assert torch.equal(with_remainders.state[q]["param_remainder"], remainder)
    assert torch.equal(mixed.join(q.detach(), with_remainders.state[q]["param_remainder"]).view(torch.int32)[
        ~masters.isnan()], masters.view(torch.int32)[~masters.isnan()])


def test_split_and_join_operators_pass_opcheck():
    """The remainders' split and join as operators (what a compiled step calls)."""
    master = _special_values()[:64].reshape(8, 8)
    param, remainder = mixed.split(master)
    torch.library.opcheck(mixed._split_op, (master,))
    torch.library.opcheck(mixed._join_op, (param, remainder))
    assert torch.equal(mixed._join_op(param, remainder).view(torch.int32)[~master.isnan()],
                       master.view(torch.int32)[~master.isnan()])
