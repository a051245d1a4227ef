"""The optimizer classes on CUDA tensors, on every backend that serves them (torch, cuda,
triton), against the fp64 reference; capturable steps in a CUDA graph; GradScaler's fused
path. Skips without a GPU; .ci/gpu runs it on a lent one. (The backends' own functions are
tested in depth in test_cuda_backend.py and test_triton_backend.py.)"""
import math

import pytest
import torch

from fused_optim import backends
from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import assert_bf16_runs_bitwise_equal, grads_for, make_params, run_with_oracle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
GPU_BACKENDS = [b for b in ("torch", "cuda", "triton") if torch.cuda.is_available() and backends.serves(b, CUDA)[0]]
KERNEL_BACKENDS = [b for b in GPU_BACKENDS if b != "torch"]
CASES = [(name, case) for name, spec in OPTIMIZERS.items() for case in spec.cases]


def _on_gpu(params):
    return [p.detach().to(CUDA).requires_grad_() for p in params]


@pytest.mark.parametrize("layout", ["4097", "300_small", "views"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_optimizer_on_cuda_matches_fp64_reference(name, case, backend, dtype, layout):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    params = _on_gpu(make_params(layout, dtype))
    opt, oracle, oracle_params = run_with_oracle(
        lambda ps: spec.cls(ps, **kwargs, backend=backend), params, lambda ps: spec.cls(ps, **kwargs, backend="torch"),
    )
    for p, q in zip(params, oracle_params):
        tolerances.assert_param_close(name, dtype, p, q, opt.param_groups[0]["lr"])
        _, param_atol = tolerances.param_tolerance(name, dtype, q.detach())
        srtol, satol = tolerances.state_tolerance(name, dtype, kwargs.get("weight_decay", 0.0), param_atol)
        for key, value in opt.state[p].items():
            if key != "step":
                torch.testing.assert_close(value.double(), oracle.state[q][key].double(), rtol=srtol, atol=satol)


@pytest.mark.parametrize("backend", [b for b in GPU_BACKENDS if backends.serves(b, CUDA, torch.bfloat16)[0]])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_bf16_states_on_cuda(name, backend):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases["default"]
    params = _on_gpu(make_params("4097", torch.float32))
    initial = [p.detach().double().clone() for p in params]
    opt, oracle, oracle_params = run_with_oracle(
        lambda ps: spec.cls(ps, **kwargs, backend=backend, state_dtype=torch.bfloat16), params,
        lambda ps: spec.cls(ps, **kwargs, backend="torch"),
    )
    for p, q, p0 in zip(params, oracle_params, initial):
        rtol, atol = tolerances.bf16_state_param_tolerance(name, torch.float32, q.detach(), p0)
        tolerances.assert_param_close(name, torch.float32, p, q, opt.param_groups[0]["lr"], rtol, atol,
                                      flip_share=tolerances.LION_BF16_STATE_FLIP_SHARE)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_capturable_step_replayed_from_a_cuda_graph_equals_eager(name, backend):
    """A whole step() captured once and replayed on new grads gives bitwise the eager steps
    (steps, DualAdam's global step and Adai's mean all stay on the device)."""
    _check_graph_replay(name, backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["AdamW", "Adai"])
def test_clipped_capturable_step_replayed_from_a_cuda_graph_equals_eager(name, backend):
    """max_grad_norm inside a captured step: the norm (for Adai: from its fused pass, with the
    mean) stays on the device."""
    _check_graph_replay(name, backend, max_grad_norm=0.05)


def _check_graph_replay(name, backend, make_params_on_gpu=None, **extra):
    spec = OPTIMIZERS[name]
    kwargs = dict(spec.cases["default"], backend=backend, capturable=True, **extra)
    if make_params_on_gpu is None:
        host = make_params("300_small", torch.float32)[:40] + make_params("4097", torch.float32)
        graphed, eager = _on_gpu(host), _on_gpu(host)
    else:
        graphed, eager = make_params_on_gpu(), make_params_on_gpu()
    opt, twin = spec.cls(graphed, **kwargs), spec.cls(eager, **kwargs)
    static_grads = [torch.zeros_like(p) for p in graphed]
    for p, g in zip(graphed, static_grads):
        p.grad = g

    def load(step):
        for g, new in zip(static_grads, grads_for(graphed, step)):
            g.copy_(new)
        for p, new in zip(eager, grads_for(eager, step)):
            p.grad = new

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: states, pointer tables, lazy kernel loading
        for step in (1, 2):
            load(step)
            opt.step()
            twin.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step in range(3, 7):
        load(step)
        graph.replay()
        twin.step()
    torch.cuda.synchronize()
    for p, q in zip(graphed, eager):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, twin.state[q][key]), key


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["AdamW", "Adai", "DualAdam"])
def test_grad_scaler_on_cuda(name, backend):
    """GradScaler hands the kernels its scale and inf flag: a scaled run equals the unscaled
    one bit for bit, and a step with an inf grad changes nothing."""
    spec = OPTIMIZERS[name]

    def run(scaler, poison=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).to(CUDA)
        opt = spec.cls(model.parameters(), **spec.cases["default"], backend=backend)
        gen = torch.Generator().manual_seed(1)
        for i in range(4):
            x, y = torch.randn(8, 16, generator=gen).to(CUDA), torch.randint(0, 4, (8,), generator=gen).to(CUDA)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if scaler is None:
                loss.backward()
                opt.step()
                continue
            scaler.scale(loss).backward()
            if i == poison:
                next(model.parameters()).grad[0, 0] = float("inf")
                before = [p.detach().clone() for p in model.parameters()]
                scaler.step(opt)
                assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
            else:
                scaler.step(opt)
            scaler.update()
        return model

    plain = run(None)
    scaled = run(torch.amp.GradScaler("cuda", init_scale=2.0**10))
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), scaled.parameters()))
    run(torch.amp.GradScaler("cuda", init_scale=2.0**10), poison=2)


@pytest.mark.parametrize("norm_type", [2.0, math.inf], ids=["l2", "inf"])
@pytest.mark.parametrize("case", ["l2", "decoupled"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_clipped_adai_cases_on_cuda_equal_clip_grad_norm_then_step(backend, case, norm_type):
    """Adai's fused clip pass on the device: L2 terms, the inf norm's max."""
    spec = OPTIMIZERS["Adai"]
    host = make_params("300_small", torch.float32)[:20] + make_params("4097", torch.float32)
    fused, plain = _on_gpu(host), _on_gpu(host)
    opt = spec.cls(fused, **spec.cases[case], backend=backend, max_grad_norm=0.5, norm_type=norm_type)
    ref = spec.cls(plain, **spec.cases[case], backend="torch")
    for step in range(1, 5):
        for p, q, g in zip(fused, plain, grads_for(host, step)):
            p.grad, q.grad = g.to(CUDA), g.to(CUDA)
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(plain, 0.5, norm_type=norm_type)
        ref.step()
        torch.testing.assert_close(opt.last_grad_norm.float(), norm, rtol=1e-5, atol=0)
    rtol, atol = tolerances.param_tolerance("Adai", torch.float32, plain[0])
    for p, q in zip(fused, plain):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_clipped_step_on_cuda_equals_clip_grad_norm_then_step(name, backend):
    """max_grad_norm: the kernels divide by the clip-folded scale they read on the device."""
    spec = OPTIMIZERS[name]
    host = make_params("300_small", torch.float32)[:20] + make_params("4097", torch.float32)
    fused, plain = _on_gpu(host), _on_gpu(host)
    opt = spec.cls(fused, **spec.cases["default"], backend=backend, max_grad_norm=0.5)
    ref = spec.cls(plain, **spec.cases["default"], backend="torch")
    for step in range(1, 5):
        for p, q, g in zip(fused, plain, grads_for(host, step)):
            p.grad, q.grad = g.to(CUDA), g.to(CUDA)
        opt.step()
        norm = torch.nn.utils.clip_grad_norm_(plain, 0.5)
        ref.step()
        torch.testing.assert_close(opt.last_grad_norm.float(), norm, rtol=1e-5, atol=0)
    rtol, atol = tolerances.param_tolerance(name, torch.float32, plain[0])
    for p, q in zip(fused, plain):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)


# ---- bf16 params with master weights / remainders / stochastic rounding (the kernels' one pass)

PARAM_MODES = ("master_weights", "param_remainders", "stochastic_rounding")


def _bf16_on_gpu(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(33, 7), (4097,), (300, 65)]
    return [(torch.randn(s, generator=gen) * 0.05).to(torch.bfloat16).to(CUDA).requires_grad_() for s in shapes]


@pytest.mark.parametrize("option", PARAM_MODES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("name", ["AdamW", "AdaMomentum", "DualAdam", "Adai", "Lion"])
def test_param_modes_on_cuda_equal_the_unfused_path(name, backend, option, monkeypatch):
    """The fused pass of the cuda/triton kernels gives the bits of the unfused path (fp32
    copies through the same kernels, params written back by torch ops), params and states."""
    from fused_optim.optimizers import _mixed_precision as mixed

    spec = OPTIMIZERS[name]
    kwargs = dict(spec.cases.get("l2", spec.cases["default"]), backend=backend, **{option: True})
    runs = []
    for fuse in (True, False):
        monkeypatch.setattr(mixed, "FUSED_BACKENDS", mixed.FUSED_BACKENDS if fuse else ())
        params = _bf16_on_gpu()
        opt = spec.cls(params, **kwargs)
        for step in range(1, 4):
            for p, g in zip(params, grads_for(params, step)):
                p.grad = g.to(CUDA)
            opt.step()
        runs.append((params, opt))
    (fused, fused_opt), (plain, plain_opt) = runs
    assert_bf16_runs_bitwise_equal(fused, fused_opt, plain, plain_opt)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stochastic_rounding_in_a_cuda_graph_follows_the_step(backend):
    """Capturable steps with stochastic rounding, replayed from a graph: the kernels hash the
    step they read on the device, so replays equal eager steps bit for bit."""
    _check_graph_replay("AdamW", backend, make_params_on_gpu=_bf16_on_gpu, stochastic_rounding=True, seed=3)
