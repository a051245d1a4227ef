"""Semantics the spec and torch.optim conventions fix, on every backend: params without
grads, empty steps, Adai's global mean and its zero case, DualAdam's fp64 switch, closures,
LR schedulers, per-group hyperparameters, determinism and non-finite gradients."""
import math

import pytest
import torch

import fused_optim
from fused_optim import backends
from fused_optim.reference import dualadam_blend_weight
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, assert_unchanged, grads_for, make_params, set_grads, snapshot, step_in_lockstep

BACKENDS = CPU_BACKENDS
NAMES = list(OPTIMIZERS)


def _opt(name, params, backend, **extra):
    spec = OPTIMIZERS[name]
    return spec.cls(params, **{**spec.cases["default"], **extra}, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [fused_optim.Adai, fused_optim.AdaiW])
def test_adai_all_zero_grads_at_step_1_is_finite(cls, backend):
    # README: vbar == 0 -> the ratio vhat / vbar is taken as 1, so beta1 = 1 - beta0.
    params = make_params("4097", torch.float32) + make_params("7", torch.float32, seed=4)
    start = [p.detach().clone() for p in params]
    opt = cls(params, lr=0.5, betas=(0.1, 0.99), backend=backend)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, p0 in zip(params, start):
        assert torch.equal(p.detach(), p0)
        state = opt.state[p]
        assert torch.equal(state["exp_avg"], torch.zeros_like(p))
        assert torch.equal(state["exp_avg_sq"], torch.zeros_like(p))
        assert torch.equal(state["beta1_prod"], torch.full_like(p, 0.9))
    # a real gradient afterwards gives a finite step
    set_grads(params, grads_for(params, 2))
    opt.step()
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_step_without_any_grad_changes_nothing(name, backend):
    params = make_params("7", torch.float32)
    opt = _opt(name, params, backend)
    set_grads(params, grads_for(params, 1))
    opt.step()
    for p in params:
        p.grad = None
    before = snapshot(opt)
    if not opt.per_param_step:
        before["global_step"] += 1  # spec: DualAdam's global step advances on every step() call
    opt.step()
    assert_unchanged(opt, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped(name, backend):
    with_grad = make_params("4097", torch.float32)
    without = make_params("7", torch.float32, seed=8)
    untouched = without[0].detach().clone()
    opt = _opt(name, with_grad + without, backend)
    alone_params = [p.detach().clone().requires_grad_() for p in with_grad]
    alone = _opt(name, alone_params, backend)
    for step in (1, 2, 3):
        grads = grads_for(with_grad, step)
        set_grads(with_grad, grads)
        set_grads(alone_params, grads)
        opt.step()
        alone.step()
    assert torch.equal(without[0].detach(), untouched)
    assert without[0] not in opt.state
    # the others (and Adai's global mean) are as if the grad-less param did not exist
    for p, q in zip(with_grad, alone_params):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adai_mean_spans_all_groups(backend):
    """Two groups (different lr) step as one global mean: equal to the authors'-structured
    per-tensor loop in fp64."""
    from fused_optim.reference.authors import AuthorsAdai

    a, b = make_params("4097", torch.float64), make_params("300_small", torch.float64, seed=6)
    ta = [p.detach().clone().requires_grad_() for p in a]
    tb = [p.detach().clone().requires_grad_() for p in b]
    groups = lambda x, y: [{"params": x, "lr": 0.5}, {"params": y, "lr": 0.1, "weight_decay": 0.01}]
    opt = fused_optim.Adai(groups(a, b), lr=1.0, backend=backend)
    ref = AuthorsAdai(groups(ta, tb), lr=1.0)
    step_in_lockstep([(opt, a + b), (ref, ta + tb)], range(1, 6))
    for p, q in zip(a + b, ta + tb):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls_name,kwargs", [
    ("AdaMomentum", {}), ("AdaMomentum", {"weight_decay": 0.05}), ("DualAdam", {"switch_rate": 0.3}),
    ("DualAdam", {"weight_decay": 0.05}),
])
def test_classes_match_the_authors_loops(cls_name, kwargs, backend):
    from fused_optim.reference import authors

    params = make_params("4097", torch.float64) + make_params("7", torch.float64, seed=2)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = getattr(fused_optim, cls_name)(params, **kwargs, backend=backend)
    ref = getattr(authors, f"Authors{cls_name}")(twins, **kwargs)
    step_in_lockstep([(opt, params), (ref, twins)], range(1, 7))
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-15)


def test_dualadam_switch_predicate_is_fp64():
    # spec: 1 - 19 * 0.05 = 0.04999999999999993 < 0.05 in fp64, so step 19 is pure Adam
    assert dualadam_blend_weight(18, 0.05) == (pytest.approx(0.1), True)
    alpha, blend = dualadam_blend_weight(19, 0.05)
    assert alpha < 0.05 and not blend
    assert dualadam_blend_weight(10**6, 0.0) == (1.0, True)  # InvAdam blends forever with alpha 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_dualadam_switch_boundary_on_backends(backend):
    """Steps 18 and 19 with xi = 0.05 on a backend equal the fp64 reference's choice."""
    params = make_params("7", torch.float64)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = fused_optim.DualAdam(params, switch_rate=0.05, backend=backend)
    ref = fused_optim.DualAdam(twins, switch_rate=0.05, backend="torch")
    step_in_lockstep([(opt, params), (ref, twins)], range(1, 21))
    torch.testing.assert_close(params[0], twins[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_closure_and_lr_scheduler(name, backend):
    params = make_params("7", torch.float32)
    manual = [p.detach().clone().requires_grad_() for p in params]
    opt = _opt(name, params, backend)
    ref = _opt(name, manual, backend)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    base_lr = ref.param_groups[0]["lr"]
    for step in range(1, 5):
        grads = grads_for(params, step)

        def closure():
            set_grads(params, grads)
            return torch.tensor(float(step))

        assert float(opt.step(closure)) == float(step)
        ref.param_groups[0]["lr"] = base_lr * 0.5 ** (step - 1)
        set_grads(manual, grads)
        ref.step()
        scheduler.step()
    for p, q in zip(params, manual):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_per_group_hyperparameters(name, backend):
    spec = OPTIMIZERS[name]
    a, b = make_params("4097", torch.float32), make_params("7", torch.float32, seed=3)
    alt = {"lr": spec.cases["default"].get("lr", 1e-3) * 3, "weight_decay": 0.02, "eps": 1e-3}
    opt = _opt(name, [{"params": a}, {"params": b, **alt}], backend)
    # the same groups on the fp64 oracle, and the same params with the defaults in both groups
    a64 = [p.detach().double().requires_grad_() for p in a]
    b64 = [p.detach().double().requires_grad_() for p in b]
    oracle = _opt(name, [{"params": a64}, {"params": b64, **alt}], "torch")
    plain_a, plain_b = ([p.detach().clone().requires_grad_() for p in x] for x in (a, b))
    plain = _opt(name, [{"params": plain_a}, {"params": plain_b}], backend)
    step_in_lockstep([(opt, a + b), (oracle, a64 + b64), (plain, plain_a + plain_b)], range(1, 6))
    for p, q in zip(a + b, a64 + b64):
        torch.testing.assert_close(p.detach().double(), q.detach(), rtol=1e-4, atol=1e-5)
    # the second group's own hyperparameters took effect
    assert not torch.equal(b[0], plain_b[0])


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the native cpu backend is not built")
@pytest.mark.parametrize("name", NAMES)
def test_cpu_backend_is_bitwise_deterministic_across_runs_and_thread_counts(name, every_chunk_on_the_threads):
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (threads, 1, threads):
            torch.set_num_threads(n)
            params = make_params("chunks", torch.float32) + make_params("300_small", torch.float32)
            opt = _opt(name, params, "cpu")
            for step in range(1, 4):
                set_grads(params, grads_for(params, step))
                opt.step()
            results.append(params)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for p, q in zip(results[0], other):
            assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_grads_behave_like_the_reference(name, backend):
    params = make_params("4097", torch.float32)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt, ref = _opt(name, params, backend), _opt(name, twins, "torch")
    for step in (1, 2):
        grads = grads_for(params, step)
        grads[0][10] = math.inf
        grads[0][20] = math.nan
        set_grads(params, grads)
        set_grads(twins, grads)
        opt.step()
        ref.step()
    for p, q in zip(params, twins):
        assert torch.equal(torch.isnan(p), torch.isnan(q))
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_backend_choice(monkeypatch):
    cpu = torch.device("cpu")
    expected = "cpu" if fused_optim.availability("cpu")[0] else "torch"
    assert backends.choose("auto", cpu) == expected
    monkeypatch.setenv("FUSED_OPTIM_BACKEND", "torch")
    assert fused_optim.Adam(make_params("7", torch.float32)).backend == "torch"
    assert fused_optim.Adam(make_params("7", torch.float32), backend="auto").backend == "torch"
    monkeypatch.setenv("FUSED_OPTIM_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FUSED_OPTIM_BACKEND"):
        fused_optim.Adam(make_params("7", torch.float32))


def test_auto_without_the_cuda_module_says_once_that_it_uses_triton(monkeypatch):
    """A source install without nvcc: GPU tensors go to triton, with one warning saying why."""
    fake = {"cuda": (False, "fused_optim._cuda was not built (no nvcc)"), "triton": (True, "")}
    monkeypatch.setattr(backends, "availability", lambda name: fake.get(name, (True, "")))
    backends._warned.clear()
    with pytest.warns(RuntimeWarning, match="using the triton backend.*no nvcc"):
        assert backends.choose("auto", torch.device("cuda")) == "triton"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.choose("auto", torch.device("cuda")) == "triton"  # once


def test_auto_on_a_device_without_native_backend_warns_once_and_uses_torch():
    backends._warned.clear()
    with pytest.warns(RuntimeWarning, match="torch reference backend"):
        assert backends.choose("auto", torch.device("meta")) == "torch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.choose("auto", torch.device("meta")) == "torch"


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the native cpu backend is not built")
@pytest.mark.parametrize("how", ["in_place_write", "load_state_dict", "torch_backend_step"])
def test_adai_cpu_sees_every_outside_change_of_exp_avg_sq(how):
    """The cpu backend carries sum(exp_avg_sq) between steps as state (exp_avg_sq_sum); every
    change made elsewhere must drop it, or the global mean would be stale: load_state_dict and
    another backend's step do, an in-place edit by hand deletes it (as the Adai docstring says)."""
    params = make_params("4097", torch.float32) + make_params("7", torch.float32, seed=4)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = fused_optim.Adai(params, lr=0.5, backend="cpu")
    ref = fused_optim.Adai(twins, lr=0.5, backend="torch")
    for step in range(1, 6):
        grads = grads_for(params, step)
        set_grads(params, grads)
        set_grads(twins, grads)
        if step == 3:
            if how == "in_place_write":
                for o, ps in ((opt, params), (ref, twins)):
                    o.state[ps[0]]["exp_avg_sq"].mul_(4.0)
                del opt.state[params[0]]["exp_avg_sq_sum"]
            elif how == "load_state_dict":
                sd = ref.state_dict()
                opt.load_state_dict(sd)
                with torch.no_grad():
                    for p, q in zip(params, twins):
                        p.copy_(q)
            else:
                opt._backend_request = "torch"
        if step == 4:
            opt._backend_request = "cpu"
        opt.step()
        ref.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_in_one_group_match_the_reference_backend(name, backend):
    """A group holding fp32, bf16 and fp64 params runs as one batch per dtype; Adai's mean
    spans all of them. Both sides do the same per-dtype math (fp32 for bf16)."""
    def params():
        return (make_params("4097", torch.float32) + make_params("7", torch.bfloat16, seed=2)
                + make_params("300_small", torch.float64, seed=3)[:5])
    ours, theirs = params(), params()
    opt, ref = _opt(name, ours, backend), _opt(name, theirs, "torch")
    step_in_lockstep([(opt, ours), (ref, theirs)], range(1, 5))
    for p, q in zip(ours, theirs):
        assert p.dtype == q.dtype
        # fp64 params get the fp32 bound too: Adai's mean mixes in the fp32 params' terms
        tol = {torch.bfloat16: (2 ** -6, 1e-4)}.get(p.dtype, (1e-4, 1e-5))
        torch.testing.assert_close(p, q, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_adai_counts_params_whose_grad_is_all_zero(backend):
    """Spec: a param whose grad is all zeros still counts in the mean's element count."""
    from fused_optim.reference.authors import AuthorsAdai

    params = make_params("4097", torch.float64) + make_params("7", torch.float64, seed=5)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt, ref = fused_optim.Adai(params, lr=0.5, backend=backend), AuthorsAdai(twins, lr=0.5)
    alone = [params[0].detach().clone().requires_grad_()]
    without = fused_optim.Adai(alone, lr=0.5, backend=backend)
    for step in range(1, 4):
        grad = grads_for(params[:1], step)[0]
        for ps in (params, twins):
            ps[0].grad, ps[1].grad = grad.clone(), torch.zeros_like(ps[1])
        alone[0].grad = grad.clone()
        for o in (opt, ref, without):
            o.step()
    torch.testing.assert_close(params[0], twins[0], rtol=1e-12, atol=1e-15)
    assert not torch.equal(params[0], alone[0])  # the 7 zero elements changed the mean


def test_without_the_native_module_auto_falls_back_to_torch(monkeypatch):
    """An install without fused_optim._cpu (e.g. not Linux) still works on the torch backend,
    says why once, and refuses an explicit backend="cpu" with the reason."""
    import sys

    monkeypatch.setitem(sys.modules, "fused_optim._cpu", None)  # makes the import fail
    backends.availability.cache_clear()
    backends._warned.clear()
    try:
        ok, why = fused_optim.availability("cpu")
        assert not ok and "did not import" in why
        params = make_params("7", torch.float32)
        with pytest.warns(RuntimeWarning, match="torch reference backend"):
            opt = fused_optim.AdamW(params)
            set_grads(params, grads_for(params, 1))
            opt.step()
        assert float(opt.state[params[0]]["step"]) == 1.0
        with pytest.raises(fused_optim.BackendUnavailable, match="did not import"):
            fused_optim.AdamW(params, backend="cpu")
    finally:
        backends.availability.cache_clear()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_non_dense_params_with_non_dense_grads_of_another_layout(name, backend):
    """Every-other-column views whose grads are strided views of other buffers: the native
    backends stage both through contiguous copies, which must stay alive while the kernel
    reads them (a freed grad copy once gave wrong updates) and be written back."""
    def setup():
        gen = torch.Generator().manual_seed(5)
        base = [torch.randn(33, 16, generator=gen, dtype=torch.float64) * 0.05 for _ in range(2)]
        params = [b.float()[:, ::2].requires_grad_() for b in base]
        grads = [(torch.randn(40, 33, generator=gen) * 0.1).t()[:, ::5] for _ in range(2)]  # (33, 8)
        return params, grads
    (ours, our_grads), (theirs, their_grads) = setup(), setup()
    opt, ref = _opt(name, ours, backend), _opt(name, theirs, "torch")
    for _ in range(3):
        set_grads(ours, our_grads)
        set_grads(theirs, their_grads)
        for p, g in zip(ours, our_grads):
            p.grad = g  # keep the strided layout (set_grads clones into a dense copy)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
