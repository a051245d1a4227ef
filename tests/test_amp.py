"""Automatic mixed precision: training under torch.autocast with a GradScaler on the CPU, on
both of GradScaler's paths. By default (as torch.optim's default optimizers) the scaler
unscales the grads in memory and skips step() on an inf, so clipping outside the step
(Lightning, accelerate, HF Trainer) sees true grads. With fused=True, max_grad_norm or
capturable=True the optimizer sets _step_supports_amp_scaling and the scaler hands it its
scale and inf flag instead (as it does torch's fused Adam): the step divides by the scale.
The scale is a power of two (exact), so either way a scaled run equals an unscaled one bit
for bit, and an overflowing step changes nothing, step counters included."""
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


# the optimizer options of each GradScaler path (capturable: every optimizer has it)
PATHS = {"unscaled_in_memory": {}, "handed_to_step": {"capturable": True}}


def _train(name, backend, scaler, batches, poison_step=None, options=None):
    model = _model()
    spec = OPTIMIZERS[name]
    opt = spec.cls(model.parameters(), **spec.cases["default"], **(options or {}), backend=backend)
    assert opt._step_supports_amp_scaling == bool(options)
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


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grad_scaler_under_autocast_equals_the_unscaled_run(name, backend, path):
    batches = _batches(5)
    plain = _train(name, backend, None, batches, options=PATHS[path])
    scaled = _train(name, backend, torch.amp.GradScaler("cpu", init_scale=2.0**10), batches, options=PATHS[path])
    for p, q in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adai", "DualAdam", "AdamW"])
def test_overflowing_step_is_skipped(name, backend, path):
    _train(name, backend, torch.amp.GradScaler("cpu", init_scale=2.0**10), _batches(4), poison_step=2,
           options=PATHS[path])


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaler_hands_the_scale_to_the_step_and_grads_stay_scaled(backend):
    """The fused path (fused=True, as torch's fused Adam): p.grad is not rewritten by unscale_
    (one pass less over the grads)."""
    model = _model()
    opt = fused_optim.AdamW(model.parameters(), fused=True, backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = _batches(1)[0]
    scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
    scaled_grads = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), scaled_grads))
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")  # the scaler took them back


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_clipping_outside_the_step_under_a_scaler_equals_the_unscaled_run(name):
    """The recipe of torch's AMP docs, Lightning's and accelerate's: unscale_, clip_grad_norm_,
    step. Lightning refuses to clip for an optimizer with _step_supports_amp_scaling (it would
    clip scaled grads); ours leave it unset unless they clip or capture themselves."""
    batches = _batches(4)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        model = _model()
        spec = OPTIMIZERS[name]
        opt = spec.cls(model.parameters(), **spec.cases["default"])
        assert not getattr(opt, "_step_supports_amp_scaling", False)  # Lightning's test
        for x, y in batches:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if scaler is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
                continue
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
        results.append(model)
    for p, q in zip(results[0].parameters(), results[1].parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_lightning_clips_under_mixed_precision(precision):
    """Lightning with mixed precision and gradient_clip_val: it refused at the first step while
    every instance set _step_supports_amp_scaling. (On a CPU Lightning runs "16-mixed" as
    "bf16-mixed", without a GradScaler; on a GPU it takes the scaler's path, which
    test_clipping_outside_the_step_under_a_scaler_equals_the_unscaled_run covers here.)"""
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _model()

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return fused_optim.AdamW(self.parameters(), lr=1e-2)

    data = torch.utils.data.DataLoader(_batches(3), batch_size=None)
    trainer = lightning.Trainer(accelerator="cpu", precision=precision, gradient_clip_val=1.0, max_steps=3,
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    module = Module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, data)
    assert trainer.global_step == 3
    assert all(not torch.equal(p, q) for p, q in zip(module.parameters(), before))
