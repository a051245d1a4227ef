"""Automatic mixed precision: training under torch.autocast with a GradScaler on the CPU.
Our optimizers set _step_supports_amp_scaling, so the scaler hands them its scale and inf flag
(as it does torch's fused Adam) instead of unscaling the grads in memory: the step divides by
the scale (a power of two: exact), so a scaled run equals an unscaled one bit for bit, and an
overflowing step changes nothing, step counters included."""
import pytest
import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, assert_unchanged, snapshot

BACKENDS = CPU_BACKENDS

pytestmark = pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch.amp.GradScaler missing")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _batches(n):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(n)]


def _train(name, backend, scaler, batches, poison_step=None):
    model = _model()
    spec = OPTIMIZERS[name]
    opt = spec.cls(model.parameters(), **spec.cases["default"], backend=backend)
    for i, (x, y) in enumerate(batches):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
            continue
        scaler.scale(loss).backward()
        if i == poison_step:
            next(model.parameters()).grad[0, 0] = float("inf")
            before = snapshot(opt)
            scaler.step(opt)
            assert_unchanged(opt, before)  # the scaler skipped the step: nothing moved
        else:
            scaler.step(opt)
        scaler.update()
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grad_scaler_under_autocast_equals_the_unscaled_run(name, backend):
    batches = _batches(5)
    plain = _train(name, backend, None, batches)
    scaled = _train(name, backend, torch.amp.GradScaler("cpu", init_scale=2.0**10), batches)
    for p, q in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adai", "DualAdam", "AdamW"])
def test_overflowing_step_is_skipped(name, backend):
    _train(name, backend, torch.amp.GradScaler("cpu", init_scale=2.0**10), _batches(4), poison_step=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaler_hands_the_scale_to_the_step_and_grads_stay_scaled(backend):
    """The fused path: p.grad is not rewritten by unscale_ (one pass less over the grads)."""
    model = _model()
    opt = fused_optim.AdamW(model.parameters(), backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = _batches(1)[0]
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    scaled_grads = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), scaled_grads))
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")  # the scaler took them back
