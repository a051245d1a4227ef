"""What training code does with a torch.optim optimizer besides step(): copy and pickle it,
put a scheduler on it, load checkpoints through hooks. Each works as with torch.optim."""
import copy
import io
import pickle

import pytest
import torch

from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, grads_for, make_params, set_grads

BACKENDS = [b for b in CPU_BACKENDS if b != "triton"]  # what is tested here is the Python layer


def _trained(name, backend, steps=3):
    params = make_params("300_small", torch.float32)[:20] + make_params("views", torch.float32, seed=2)
    spec = OPTIMIZERS[name]
    opt = spec.cls([{"params": params[:10]}, {"params": params[10:]}], **spec.cases["default"], backend=backend)
    for step in range(1, steps + 1):
        set_grads(params, grads_for(params, step))
        opt.step()
    return opt


def _params(opt):
    return [p for group in opt.param_groups for p in group["params"]]


def _assert_same(a, b):
    for p, q in zip(_params(a), _params(b)):
        assert torch.equal(p, q)
        for key, value in a.state[p].items():
            other = b.state[q][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key
    assert getattr(a, "global_step", None) == getattr(b, "global_step", None)


def _torch_save_load(opt):
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda opt: pickle.loads(pickle.dumps(opt)),
          "torch.save": _torch_save_load}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_copied_optimizer_steps_exactly_like_the_original(name, backend, how):
    original = _trained(name, backend)
    copied = COPIES[how](original)
    assert copied.backend == original.backend
    for step in (4, 5):  # the copy holds its own params: both take the same grads
        for opt in (original, copied):
            set_grads(_params(opt), grads_for(_params(original), step))
            opt.step()
    _assert_same(original, copied)


@pytest.mark.parametrize("name", ["Adai", "AdaiW"])
@pytest.mark.parametrize("make_scheduler", [
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10),
    lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.1, max_lr=1.0),
], ids=["OneCycleLR", "CyclicLR"])
def test_momentum_cycling_schedulers_cannot_rewrite_adais_beta0(name, make_scheduler):
    """betas[0] of Adai is beta0 (the inertia's scale), not a momentum: the schedulers that
    cycle a momentum refuse Adai instead of silently rewriting it."""
    spec = OPTIMIZERS[name]
    opt = spec.cls(make_params("7", torch.float32), **spec.cases["default"])
    betas = opt.param_groups[0]["betas"]
    with pytest.raises(ValueError, match="momentum"):
        make_scheduler(opt)
    assert opt.param_groups[0]["betas"] == betas


def test_adai_schedules_lr_without_cycling_momentum_and_keeps_betas():
    spec = OPTIMIZERS["Adai"]
    params = make_params("7", torch.float32)
    opt = spec.cls(params, betas=(0.2, 0.98), lr=0.5)
    assert "betas" not in opt.defaults  # what the schedulers look for
    opt.add_param_group({"params": make_params("1", torch.float32)})
    assert opt.param_groups[1]["betas"] == (0.2, 0.98)  # defaults still fill new groups
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    for step in range(1, 4):
        set_grads(params, grads_for(params, step))
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["betas"] == (0.2, 0.98)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "AdaMomentum", "DualAdam"])
def test_momentum_schedulers_still_cycle_a_true_momentum(name):
    spec = OPTIMIZERS[name]
    opt = spec.cls(make_params("7", torch.float32), **spec.cases["default"])
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_load_state_dict_pre_hooks_run_before_our_checks(name):
    """A pre-hook may repair a checkpoint (here: steps saved as strings by some tool): torch
    runs it first, so must we. The post-hook runs after the state is in place."""
    source = _trained(name, "torch")
    saved = source.state_dict()
    counter = "global_step" if "global_step" in saved else None
    if counter:
        saved[counter] = str(saved[counter])
    for state in saved["state"].values():
        if "step" in state:
            state["step"] = str(int(state["step"].item()))
    target = _trained(name, "torch", steps=1)

    def repair(optimizer, state_dict):
        if counter:
            state_dict[counter] = int(state_dict[counter])
        for state in state_dict["state"].values():
            if "step" in state:
                state["step"] = torch.tensor(float(state["step"]))
        return state_dict

    seen = []
    target.register_load_state_dict_pre_hook(repair)
    target.register_load_state_dict_post_hook(lambda optimizer: seen.append(optimizer.state_dict()))
    target.load_state_dict(saved)
    assert len(seen) == 1
    for p, q in zip(_params(source), _params(target)):
        for key, value in source.state[p].items():
            assert torch.equal(value, target.state[q][key]), key
    assert getattr(source, "global_step", None) == getattr(target, "global_step", None)
