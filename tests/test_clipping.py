"""max_grad_norm: torch.nn.utils.clip_grad_norm_ fused into the step. In fp64, for every
optimizer and backend, a clipped step equals clip_grad_norm_ followed by the unclipped step;
the bound is one for all groups; p.grad is left as it is; the norm is kept for logging."""
import math

import pytest
import torch
import torch._dynamo

from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import CPU_BACKENDS, assert_unchanged, grads_for, make_params, needs_compiled_step, snapshot

NAMES = list(OPTIMIZERS)


def _groups(params, name):
    """Two groups with different lr (the second half at a quarter of the first's)."""
    lr = OPTIMIZERS[name].cases["default"].get("lr", 1e-3)
    half = len(params) // 2
    return [{"params": params[:half], "lr": lr}, {"params": params[half:], "lr": lr / 4}]


def _layout():
    return make_params("300_small", torch.float64)[:6] + make_params("4097", torch.float64, seed=3)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf], ids=["l2", "l1", "inf"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_equals_clip_grad_norm_then_the_unclipped_step(name, backend, norm_type):
    spec = OPTIMIZERS[name]
    kwargs = dict(spec.cases["default"])  # the groups set their own lr
    # fp64: the torch and cpu backends divide by the fp64 coefficient (a few ulps from
    # clip_grad_norm_'s multiplication); the GPU kernels (triton here) read an fp32 scale, as
    # torch's fused optimizers do: the clipped grads then carry its 6e-8 relative rounding
    rtol, atol = (tolerances.FP64[0] * 10, tolerances.FP64[1]) if backend in ("torch", "cpu") else (1e-6, 1e-9)
    fused, plain = _layout(), _layout()
    opt = spec.cls(_groups(fused, name), **kwargs, backend=backend, max_grad_norm=1.0, norm_type=norm_type)
    ref = spec.cls(_groups(plain, name), **kwargs, backend=backend)
    for step in range(1, 5):
        grads = grads_for(fused, step)
        for p, q, g in zip(fused, plain, grads):
            p.grad, q.grad = g, g.clone()
        # changed per step like lr; step 2 stays below the bound: clipping then changes nothing
        bound = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]), norm_type))
        bound *= 2.0 if step == 2 else 0.3
        for group in opt.param_groups:
            group["max_grad_norm"] = bound
        kept = [p.grad.clone() for p in fused]
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(plain, bound, norm_type=norm_type)
        ref.step()
        assert all(torch.equal(p.grad, k) for p, k in zip(fused, kept)), "p.grad was modified"
        torch.testing.assert_close(opt.last_grad_norm.double(), norm.double(), rtol=1e-12, atol=0)
        assert (norm < bound) == (step == 2)
        for p, q in zip(fused, plain):
            torch.testing.assert_close(p, q, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["AdamW", "Adai"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_inactive_clipping_is_the_plain_step(backend, name):
    """A bound above the norm changes nothing: bitwise for the Adam family (the coefficient is
    exactly 1). Adai's fused pass takes its mean of vhat from per-batch sums (a quadratic in
    the coefficient) instead of summing each vhat: the same value to fp64 rounding, so
    fp64 params agree to a few ulps."""
    fused, plain = _layout(), _layout()
    kwargs = dict(OPTIMIZERS[name].cases["default"])
    opt = OPTIMIZERS[name].cls(fused, **kwargs, backend=backend, max_grad_norm=1e9)
    ref = OPTIMIZERS[name].cls(plain, **kwargs, backend=backend)
    for step in (1, 2, 3):
        for p, q, g in zip(fused, plain, grads_for(fused, step)):
            p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
    if name == "Adai":
        for p, q in zip(fused, plain):
            torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)
    else:
        assert all(torch.equal(p, q) for p, q in zip(fused, plain))


def test_nonfinite_norm_raises_before_anything_changes_when_asked():
    params = make_params("7", torch.float32)
    opt = OPTIMIZERS["AdamW"].cls(params, max_grad_norm=1.0, error_if_nonfinite=True)
    for p, g in zip(params, grads_for(params, 1)):
        p.grad = g
    opt.step()
    params[0].grad[0] = float("nan")
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step()
    assert_unchanged(opt, before)


def test_the_bound_is_one_for_all_groups():
    params = make_params("300_small", torch.float32)[:4]
    opt = OPTIMIZERS["Adam"].cls([{"params": params[:2]}, {"params": params[2:]}], max_grad_norm=1.0)
    opt.param_groups[1]["max_grad_norm"] = 2.0  # a schedule that forgot a group
    for p, g in zip(params, grads_for(params, 1)):
        p.grad = g
    before = snapshot(opt)
    with pytest.raises(ValueError, match="same in every param group"):
        opt.step()
    assert_unchanged(opt, before)
    for group in opt.param_groups:  # changed in all groups: fine, per step like lr
        group["max_grad_norm"] = 0.5
    opt.step()
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    torch.testing.assert_close(opt.last_grad_norm, expected.double())


@pytest.mark.parametrize("name", NAMES)
def test_every_class_takes_the_common_options(name):
    spec = OPTIMIZERS[name]
    opt = spec.cls(make_params("7", torch.float32), **spec.cases["default"], state_dtype=torch.bfloat16,
                   capturable=True, max_grad_norm=0.5, norm_type=1.0, error_if_nonfinite=True)
    group = opt.param_groups[0]
    assert (group["state_dtype"], group["capturable"], group["max_grad_norm"], group["norm_type"],
            group["error_if_nonfinite"]) == (torch.bfloat16, True, 0.5, 1.0, True)


def test_bad_settings_are_refused():
    params = make_params("7", torch.float32)
    with pytest.raises(ValueError, match="max_grad_norm"):
        OPTIMIZERS["Adam"].cls(params, max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="norm_type"):
        OPTIMIZERS["Adam"].cls(params, max_grad_norm=1.0, norm_type=float("nan"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_with_a_grad_scaler_the_norm_is_of_the_unscaled_grads(backend):
    """GradScaler's scale and the clip coefficient share one divisor; with a power-of-two
    scale the scaled run equals the unscaled one bit for bit."""
    def run(scaled):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
        opt = OPTIMIZERS["AdamW"].cls(model.parameters(), backend=backend, max_grad_norm=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if scaled else None
        gen = torch.Generator().manual_seed(1)
        norms = []
        for _ in range(3):
            x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen)
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            norms.append(opt.last_grad_norm)
        return model, norms

    (plain, plain_norms), (scaled, scaled_norms) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(plain_norms, scaled_norms))
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), scaled.parameters()))


@needs_compiled_step
def test_clipped_step_compiles_into_one_graph_and_equals_eager():
    """Params and opt.last_grad_norm after each compiled step equal eager's (the norm lives in
    the param groups: an optimizer attribute was written by the first compiled call only)."""
    torch._dynamo.reset()
    params, twin = make_params("7", torch.float32), make_params("7", torch.float32)
    opt = OPTIMIZERS["Adai"].cls(params, lr=0.1, max_grad_norm=0.01)
    ref = OPTIMIZERS["Adai"].cls(twin, lr=0.1, max_grad_norm=0.01)
    step = torch.compile(opt.step, backend="aot_eager", fullgraph=True)
    norms = []
    for s in (1, 2, 3):
        for p, q, g in zip(params, twin, grads_for(params, s)):
            p.grad, q.grad = g, g.clone()
        step()
        ref.step()
        assert all(torch.equal(p, q) for p, q in zip(params, twin))
        assert torch.equal(opt.last_grad_norm, ref.last_grad_norm)
        norms.append(float(opt.last_grad_norm))
    assert len(set(norms)) == 3  # a new norm each step
    torch._dynamo.reset()


# ----- Adai: the grad norm and the mean of vhat from one pass (adai_clip_sums) ----------------

ADAI_NORMS = [2.0, 1.0, 3.0, math.inf, -math.inf]
ADAI_NORM_IDS = ["l2", "l1", "l3", "inf", "-inf"]


@pytest.mark.parametrize("norm_type", ADAI_NORMS, ids=ADAI_NORM_IDS)
@pytest.mark.parametrize("case", ["l2", "decoupled"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_adai_clip_sums_match_the_fp64_reference(backend, case, norm_type):
    from fused_optim import backends

    check_adai_clip_sums(backends.implementation(backend), case, norm_type)


def check_adai_clip_sums(impl, case, norm_type, params=None, device="cpu"):
    """A backend's one-pass sums equal the reference's: the norm part, and sum(vhat) as a
    quadratic in the clip coefficient, which at any coefficient c equals the sum of vhat over
    the grads multiplied by c (checked at c = 0.3 against the reference pass 1 itself).
    (Also run on the emulated CUDA kernels: tests/test_cuda_backend.py.)"""
    from fused_optim import reference

    if params is None:
        params = _layout()[:5] + [torch.zeros(0, dtype=torch.float64)]
    grads = [g.clone() for g in grads_for(params, 1)]
    states = [torch.rand_like(p) for p in params]  # exp_avg_sq >= 0
    counts = [0.0, 3.0, 1.0, 7.0, 2.0, 0.0]
    steps = [torch.tensor(counts[i % len(counts)], device=device) for i in range(len(params))]
    hyper = dict(beta2=0.99, weight_decay=0.05, decoupled=case == "decoupled")
    scale = torch.tensor(4.0, device=device)
    sums = impl.adai_clip_sums(params, [g * 4 for g in grads], states, steps, norm_type=norm_type,
                               grad_scale=scale, **hyper)
    new_steps = [float(s) + 1 for s in steps]
    expected = reference.adai_clip_sums(params, grads, states, new_steps, norm_type=norm_type, **hyper)
    torch.testing.assert_close(sums.cpu(), expected.cpu(), rtol=1e-12, atol=0)
    if params[0].dtype != torch.float64:
        return  # (the identity below is the reference's own: checked once, in fp64)
    c = 0.3
    vhat = reference.adai_second_moment(params, [g * c for g in grads], [v.clone() for v in states], new_steps,
                                        **hyper)
    torch.testing.assert_close(expected[1] + c * expected[2] + c * c * expected[3], vhat, rtol=1e-12, atol=0)
    flat = torch.cat([g.flatten() for g in grads])
    if math.isinf(norm_type):
        torch.testing.assert_close(expected[0], torch.linalg.vector_norm(flat, norm_type), rtol=0, atol=0)
    else:
        torch.testing.assert_close(expected[0] ** (1 / norm_type), torch.linalg.vector_norm(flat, norm_type),
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 3.0], ids=["l2", "inf", "l3"])
@pytest.mark.parametrize("case", ["l2", "decoupled", "betas_eps"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clipped_adai_cases_equal_clip_grad_norm_then_the_unclipped_step(backend, case, norm_type):
    """The L2 terms of the fused pass (sum g p and p^2, weighted by the coefficient), in fp64."""
    spec = OPTIMIZERS["Adai"]
    kwargs = dict(spec.cases[case])
    fused, plain = _layout(), _layout()
    opt = spec.cls(_groups(fused, "Adai"), **kwargs, backend=backend, max_grad_norm=1.0, norm_type=norm_type)
    ref = spec.cls(_groups(plain, "Adai"), **kwargs, backend=backend)
    rtol, atol = (1e-11, 1e-13) if backend in ("torch", "cpu") else (1e-6, 1e-9)
    for step in range(1, 5):
        grads = grads_for(fused, step)
        for p, q, g in zip(fused, plain, grads):
            p.grad, q.grad = g, g.clone()
        bound = 0.3 * float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]), norm_type))
        for group in opt.param_groups:
            group["max_grad_norm"] = bound
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(plain, bound, norm_type=norm_type)
        ref.step()
        torch.testing.assert_close(opt.last_grad_norm.double(), norm.double(), rtol=1e-12, atol=0)
        for p, q in zip(fused, plain):
            torch.testing.assert_close(p, q, rtol=rtol, atol=atol)


@pytest.mark.parametrize("master_weights", [False, True], ids=["plain", "masters"])
def test_clipped_adai_nonfinite_norm_raises_before_anything_changes(master_weights):
    """Adai finds the norm in its own pass, after bf16 params were given their masters: a
    non-finite norm with error_if_nonfinite still leaves params and state as they were."""
    dtype = torch.bfloat16 if master_weights else torch.float32
    params = make_params("7", dtype)
    opt = OPTIMIZERS["Adai"].cls(params, lr=0.1, max_grad_norm=1.0, error_if_nonfinite=True,
                                 master_weights=master_weights)
    for p, g in zip(params, grads_for(params, 1)):
        p.grad = g
    params[0].grad[0] = float("inf")
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step()
    assert_unchanged(opt, before)
    assert not opt.state or all(not s for s in opt.state.values())
