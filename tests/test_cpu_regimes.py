"""The cpu backend against the reference where its arithmetic or its bookkeeping could part
from it: subnormal values (IEEE arithmetic, as torch computes, not flush-to-zero), the
caller's flush-denormal mode on every worker thread, Adai's sum(exp_avg_sq) carried between
steps as explicit optimizer state, and grads whose square overflows fp32."""
import io
import math

import pytest
import torch

import fused_optim
from fused_optim import backends
from fused_optim.optimizers.adai import V_SUM
from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import CPU_BACKENDS, grads_for, make_params, needs_compiled_step, set_grads

pytestmark = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the native cpu backend is not built")

FP32_ADAI_RTOL = tolerances.FP32_ADAI[0]


def _fp64_twins(params):
    return [p.detach().double().clone().requires_grad_() for p in params]


def _step_pair(opt, params, ref, twins, grads):
    set_grads(params, grads)
    set_grads(twins, [g.double() for g in grads])
    opt.step()
    ref.step()


def _assert_matches_reference(opt, params, ref, twins, rtol=FP32_ADAI_RTOL, atol=tolerances.FP32_ADAI[1]):
    """Params and every state the reference keeps; Adai's carried sum, where the cpu backend
    keeps one, equals the sum of its exp_avg_sq."""
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.detach().double(), q.detach(), rtol=rtol, atol=atol)
        state = opt.state[p]
        for key, expected in ref.state[q].items():
            if key == "step":
                assert float(state[key]) == float(expected)
                continue
            torch.testing.assert_close(state[key].double(), expected, rtol=rtol, atol=atol,
                                       msg=lambda m, key=key: f"state {key}: {m}")
        if V_SUM in state:
            _assert_sum_is_state(state)


def _assert_sum_is_state(state):
    total = state[V_SUM]
    assert total.dim() == 0 and total.dtype == torch.float64 and total.device.type == "cpu"
    # the same fp32 values summed in fp64 in another order: only the last bits can differ
    torch.testing.assert_close(total, state["exp_avg_sq"].double().sum(), rtol=1e-12, atol=0)


# ----- subnormal values ---------------------------------------------------------------------

def test_adai_keeps_subnormal_second_moments():
    """Grads of 1e-20 square to 1e-40, below the smallest normal float (1.2e-38): v lives in
    the subnormal range from the first step. Flushed to zero, v would be 0 and every element
    would take the ratio-1 path (beta1_prod 0.729 everywhere after 3 steps); kept, beta1_prod
    is [0.958, 0.838, 0.459] as in the reference."""
    p = torch.zeros(3, requires_grad=True)
    (q,) = _fp64_twins([p])
    opt = fused_optim.Adai([p], lr=1.0, backend="cpu")
    ref = fused_optim.Adai([q], lr=1.0, backend="torch")
    for _ in range(3):
        _step_pair(opt, [p], ref, [q], [torch.tensor([1e-20, 2e-20, 4e-20])])
    # atol 0: the values are ~1e-20 (params) down to 3e-42 (v), so any atol would hide them.
    # A subnormal float has a fixed step of 2^-149 = 1.4e-45: the smallest v (1e-42 after
    # step 1) is 700 steps, so one rounding of it is up to 7e-4 relative, and the ratio
    # vhat / vbar, beta1, m and beta1_prod carry that; 4e-3 bounds a few such roundings.
    # The params' error stays at fp32 size (m / (1 - beta1_prod) cancels most of it).
    torch.testing.assert_close(p.detach().double(), q.detach(), rtol=FP32_ADAI_RTOL, atol=0)
    for key, expected in ref.state[q].items():
        torch.testing.assert_close(opt.state[p][key].double(), expected.double(), rtol=4e-3, atol=0,
                                   msg=lambda m, key=key: f"state {key}: {m}")


def test_adai_beta1_prod_below_the_smallest_normal_is_stored_as_zero_without_changing_the_step():
    """The one value the cpu backend flushes (csrc/cpu/adai.cpp: x86 multiplies subnormals in
    slow microcode). A product of factors <= 1 - eps that falls below the smallest normal float
    stays there, and 1 - beta1_prod is exactly 1 either way: params and the other states are
    the reference's, and beta1_prod is within that smallest normal of it."""
    tiny = torch.finfo(torch.float32).tiny
    params, opt, twins, ref = _adai_twins()
    _step_pair(opt, params, ref, twins, grads_for(params, 1))
    # 1e-30 stays normal; 3e-38 falls below within 3 steps where beta1 < 0.73 (beta1 = 1 - 0.1
    # vhat / vbar: where vhat > 2.7 vbar); 1e-39 and 1e-44 start subnormal
    starts = torch.tensor([1e-30, 3e-38, 1e-39, 1e-44])

    def pattern(p):
        return starts.repeat(p.numel() // 4 + 1)[:p.numel()].view(p.shape)

    for o, ps in ((opt, params), (ref, twins)):
        for p in ps:
            o.state[p]["beta1_prod"].copy_(pattern(p))
    for step in range(2, 5):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    fell_below = 0
    for p, q in zip(params, twins):
        ours, theirs = opt.state[p]["beta1_prod"], ref.state[q]["beta1_prod"]
        below = theirs < tiny
        assert torch.equal(ours[below], torch.zeros_like(ours[below]))
        assert bool((ours[~below] >= tiny).all())
        torch.testing.assert_close(ours.double(), theirs, rtol=FP32_ADAI_RTOL, atol=tiny)
        fell_below += int((below & (pattern(p) == starts[1])).sum())
    assert fell_below > 0  # products that fell below during the run, not only subnormal starts
    _assert_matches_reference(opt, params, ref, twins)


# ----- the caller's floating-point mode on every thread --------------------------------------

def _flushing() -> bool:
    """Whether this thread flushes subnormals now (torch.set_flush_denormal sets FTZ/DAZ)."""
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


@pytest.fixture
def restore_fp_mode():
    flushing, threads = _flushing(), torch.get_num_threads()
    yield
    torch.set_flush_denormal(flushing)
    torch.set_num_threads(threads)


# three native chunks (65536 elements each): with 2 threads the last one runs on a worker
THREE_CHUNKS = 3 * 65536


def _subnormal_run(name, backend, threads, flush):
    """3 steps on params of 0 with grads alternating between 1e-39 (subnormal: 0 where the
    mode flushes) and 1e-3, on `threads` threads with the denormal mode `flush`. Tensors are
    made before the mode is set: under flush-to-zero, writing 1e-39 into a float gives 0."""
    p = torch.zeros(THREE_CHUNKS, requires_grad=True)
    grad = torch.where(torch.arange(THREE_CHUNKS) % 2 == 0, torch.tensor(1e-39), torch.tensor(1e-3))
    assert float(grad[0]) != 0.0  # made in IEEE mode (restore_fp_mode puts the caller's back)
    opt = OPTIMIZERS[name].cls([p], **OPTIMIZERS[name].cases["default"], backend=backend)
    torch.set_num_threads(threads)
    if flush and not torch.set_flush_denormal(True):
        pytest.skip("torch.set_flush_denormal is not supported on this machine (not x86)")
    try:
        for _ in range(3):
            p.grad = grad.clone()
            opt.step()
    finally:
        torch.set_flush_denormal(False)
    return p.detach(), opt.state[p]


@pytest.mark.parametrize("flush", [False, True], ids=["ieee", "flush_denormal"])
@pytest.mark.parametrize("name", ["Adam", "AdaMomentum", "Adai"])
def test_results_do_not_depend_on_the_thread_count(name, flush, restore_fp_mode, every_chunk_on_the_threads):
    """MXCSR (FTZ/DAZ) is per thread: the OpenMP workers must compute in the caller's mode,
    or the chunks a worker runs would keep subnormals the caller's chunks flush."""
    one = _subnormal_run(name, "cpu", 1, flush)
    two = _subnormal_run(name, "cpu", 2, flush)
    assert torch.equal(one[0], two[0])
    assert one[1].keys() == two[1].keys()
    for key, value in one[1].items():
        assert torch.equal(value, two[1][key]), key


@pytest.mark.parametrize("name", ["Adam", "AdaMomentum", "Adai"])
def test_flush_denormal_mode_gives_the_references_result(name, restore_fp_mode, every_chunk_on_the_threads):
    """Under torch.set_flush_denormal(True), the cpu backend on 2 threads against the reference
    in fp32 (the torch backend) on 1 thread, where torch's own ops all run on the caller's
    thread and so in its mode. atol 0: the flushed elements are 0 on both sides, and an
    unflushed one would differ from 0 by a subnormal (1e-40) or by ~1e-34."""
    ours = _subnormal_run(name, "cpu", 2, True)
    theirs = _subnormal_run(name, "torch", 1, True)
    rtol = tolerances.FP32_ADAI[0] if name == "Adai" else tolerances.FP32[0]
    torch.testing.assert_close(ours[0], theirs[0], rtol=rtol, atol=0)
    for key, expected in theirs[1].items():
        torch.testing.assert_close(ours[1][key], expected, rtol=rtol, atol=0, msg=lambda m, key=key: f"{key}: {m}")


# ----- Adai's carried sum(exp_avg_sq) --------------------------------------------------------

def _adai_twins(layout="4097"):
    params = make_params(layout, torch.float32) + make_params("7", torch.float32, seed=4)
    twins = _fp64_twins(params)
    return (params, fused_optim.Adai(params, lr=0.5, backend="cpu"),
            twins, fused_optim.Adai(twins, lr=0.5, backend="torch"))


def test_adai_sum_is_explicit_state_of_every_param():
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 4):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
        for p in params:
            _assert_sum_is_state(opt.state[p])
    _assert_matches_reference(opt, params, ref, twins)


def test_adai_edit_through_data_then_deleting_the_sum_gives_the_reference():
    """A write through .data (or a numpy view) bumps no version counter: nothing can see it.
    Deleting the sum, as the Adai docstring says, makes the next step read exp_avg_sq."""
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 3):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    for o, ps in ((opt, params), (ref, twins)):
        o.state[ps[0]]["exp_avg_sq"].data.mul_(100.0)
    del opt.state[params[0]][V_SUM]
    _step_pair(opt, params, ref, twins, grads_for(params, 3))
    _assert_matches_reference(opt, params, ref, twins)


@pytest.mark.parametrize("edit", ["mul_", "zero_", "replace"])
def test_adai_in_place_torch_writes_to_exp_avg_sq_are_seen(edit):
    """A torch op that writes exp_avg_sq (resetting the moments, scaling them) or a new tensor
    in its place makes the next step read exp_avg_sq: no stale sum, nothing to delete."""
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 3):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    for o, ps in ((opt, params), (ref, twins)):
        state = o.state[ps[0]]
        if edit == "mul_":
            state["exp_avg_sq"].mul_(100.0)
        elif edit == "zero_":
            state["exp_avg_sq"].zero_()
        else:
            state["exp_avg_sq"] = state["exp_avg_sq"] * 3.0
    _step_pair(opt, params, ref, twins, grads_for(params, 3))
    _assert_matches_reference(opt, params, ref, twins)


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_adai_sum_survives_a_state_dict_round_trip():
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 3):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    saved = _roundtrip(opt.state_dict())
    assert all(V_SUM in s for s in saved["state"].values())
    resumed = [p.detach().clone().requires_grad_() for p in params]
    fresh = fused_optim.Adai(resumed, lr=0.5, backend="cpu")
    fresh.load_state_dict(saved)
    for p, q in zip(params, resumed):
        _assert_sum_is_state(fresh.state[q])
        assert torch.equal(fresh.state[q][V_SUM], opt.state[p][V_SUM])
    for step in range(3, 5):
        grads = grads_for(params, step)
        set_grads(params, grads)
        set_grads(resumed, grads)
        opt.step()
        fresh.step()
    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, fresh.state[q][key]), key


def test_adai_state_dict_without_sums_recomputes_them():
    """A state dict without the sums (the authors', torch's, an older one of ours) whose
    exp_avg_sq differs from what this optimizer last summed: the next step reads it."""
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 3):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    saved = _roundtrip(opt.state_dict())
    for state in saved["state"].values():
        del state[V_SUM]
        state["exp_avg_sq"].mul_(100.0)
    opt.load_state_dict(saved)
    assert not any(V_SUM in opt.state[p] for p in params)
    for q in twins:
        ref.state[q]["exp_avg_sq"].mul_(100.0)
    _step_pair(opt, params, ref, twins, grads_for(params, 3))
    _assert_matches_reference(opt, params, ref, twins)


def test_adai_sum_is_dropped_where_loading_converts_exp_avg_sq():
    """A sum saved with fp64 states, loaded for fp32 params: the rounded exp_avg_sq no longer
    has that sum, so it is dropped and read again."""
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 3):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    saved = _roundtrip(opt.state_dict())
    for state in saved["state"].values():
        state["exp_avg_sq"] = state["exp_avg_sq"].double()
    opt.load_state_dict(saved)
    assert not any(V_SUM in opt.state[p] for p in params)


def test_adai_switching_backends_drops_and_rebuilds_the_sum():
    """The torch backend does not keep the sum (it reads exp_avg_sq in its own pass 1): its
    update drops it, and the next cpu step reads exp_avg_sq once and keeps it again."""
    params, opt, twins, ref = _adai_twins()
    for step, backend in enumerate(["cpu", "torch", "cpu", "torch", "cpu"], start=1):
        opt._backend_request = backend
        _step_pair(opt, params, ref, twins, grads_for(params, step))
        assert all((V_SUM in opt.state[p]) == (backend == "cpu") for p in params), step
        _assert_matches_reference(opt, params, ref, twins)


@pytest.mark.parametrize("had_sum", [True, False], ids=["sum_kept", "sum_missing"])
def test_adai_step_skipped_by_found_inf_leaves_the_sum_consistent(had_sum):
    params, opt, twins, ref = _adai_twins()
    for step in range(1, 3):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    if not had_sum:
        del opt.state[params[0]][V_SUM]
    kept = {i: opt.state[p][V_SUM].clone() for i, p in enumerate(params) if V_SUM in opt.state[p]}
    before = [opt.state[p]["exp_avg_sq"].clone() for p in params]
    set_grads(params, grads_for(params, 3))
    opt.found_inf = torch.ones(())  # as GradScaler hands it over
    try:
        opt.step()
    finally:
        del opt.found_inf
    for i, p in enumerate(params):
        assert torch.equal(opt.state[p]["exp_avg_sq"], before[i])
        if i in kept:
            assert torch.equal(opt.state[p][V_SUM], kept[i])
        if V_SUM in opt.state[p]:
            _assert_sum_is_state(opt.state[p])
    _step_pair(opt, params, ref, twins, grads_for(params, 4))
    _assert_matches_reference(opt, params, ref, twins)


@needs_compiled_step
def test_the_operators_declare_what_they_do_with_the_sums():
    """torch.compile functionalizes the cpu operators by their schemas: adai_update writes the
    sums, pass 1 only reads them (opcheck runs each against its schema and its fake)."""
    backends.implementation("cpu")  # its operators are defined
    params = [torch.randn(5), torch.randn(3, 4)]
    grads, steps = [torch.randn_like(p) for p in params], [torch.tensor(2.0) for _ in params]

    def like(fill):
        return [torch.full_like(p, fill) for p in params]

    def sums():  # one known, one not
        return [torch.tensor(0.1, dtype=torch.float64), torch.tensor(math.nan, dtype=torch.float64)]

    hyper = dict(beta2=0.99, weight_decay=0.01, decoupled=False)
    ops = torch.ops.fused_optim
    torch.library.opcheck(ops.cpu_adai_second_moment.default, (params, grads, like(0.02), steps),
                          dict(**hyper, v_sums=sums()))
    torch.library.opcheck(ops.cpu_adai_clip_sums.default, (params, grads, like(0.02), steps),
                          dict(**hyper, norm_type=2.0, v_sums=sums()))
    torch.library.opcheck(ops.cpu_adai_update.default, (params, grads, like(0.01), like(0.02), like(1.0), steps),
                          dict(**hyper, lr=0.1, beta0=0.1, eps=1e-3, vbar=torch.tensor(0.015, dtype=torch.float64),
                               v_sums=sums()))


# ----- overflow -------------------------------------------------------------------------------

def test_adai_grad_whose_square_overflows_gives_the_references_nan():
    """A finite fp32 grad of 1e20: vhat ~ g^2 = 1e40 is inf in fp32 (above 3.4e38), so the mean
    is inf and the element's ratio inf/inf is NaN, as in the authors' code. Compared with the
    reference in fp32 (the torch backend; in fp64 1e40 is finite and nothing is NaN)."""
    p = torch.zeros(3, requires_grad=True)
    q = torch.zeros(3, requires_grad=True)
    opt = fused_optim.Adai([p], lr=1.0, backend="cpu")
    ref = fused_optim.Adai([q], lr=1.0, backend="torch")
    for _ in range(2):
        p.grad, q.grad = torch.tensor([1e20, 1.0, 1.0]), torch.tensor([1e20, 1.0, 1.0])
        opt.step()
        ref.step()
    assert math.isnan(float(p.detach()[0])) and bool(torch.isfinite(p.detach()[1:]).all())
    torch.testing.assert_close(p, q, rtol=FP32_ADAI_RTOL, atol=0, equal_nan=True)
    for key, expected in ref.state[q].items():
        torch.testing.assert_close(opt.state[p][key], expected, rtol=FP32_ADAI_RTOL, atol=0, equal_nan=True,
                                   msg=lambda m, key=key: f"state {key}: {m}")


def test_adai_records_sums_only_of_its_own_states():
    """A strided param is staged through a stand-in state each step: its sum is read again
    next step, and the optimizer keeps no record of the stand-ins (which would pile up)."""
    strided = (torch.randn(16, 24, generator=torch.Generator().manual_seed(3)) * 0.05)[:, ::3].requires_grad_()
    params = [strided] + make_params("7", torch.float32, seed=4)
    twins = _fp64_twins(params)
    opt = fused_optim.Adai(params, lr=0.5, backend="cpu")
    ref = fused_optim.Adai(twins, lr=0.5, backend="torch")
    for step in range(1, 5):
        _step_pair(opt, params, ref, twins, grads_for(params, step))
    assert len(opt._v_sum_of) <= len(params)
    _assert_matches_reference(opt, params, ref, twins)
