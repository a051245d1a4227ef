"""Automatic mixed precision: training under torch.autocast with a GradScaler on the CPU.
The scaler unscales the grads (a power of two: exact) and calls step() unless it found an
inf/NaN, so a scaled run equals an unscaled one bit for bit, and an overflowing step changes
nothing."""
import pytest
import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

from .helpers import assert_unchanged, snapshot

BACKENDS = ["torch"] + (["cpu"] if fused_optim.availability("cpu")[0] else [])

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
