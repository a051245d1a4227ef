"""Lion on every backend that serves CPU tensors here, against values worked out by hand (the
fp64 reference matrix is test_parity.py): the sign of the interpolation, its zero (an exact
tie, and a zero grad on a zero momentum: the param only decays), the momentum updated after
the sign with its own rate, and a NaN grad, which poisons its element as torch.sign does."""
import math

import pytest
import torch

import fused_optim

from .helpers import CPU_BACKENDS

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _step(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=p.dtype)
    opt.step()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_two_steps_by_hand(backend, dtype):
    # lr 1/8 and wd 1/2 (decay factor 15/16), betas 1/2 and 3/4: every value below is exact in
    # binary, so each backend and dtype must give exactly these numbers
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, -0.5, 2.0], dtype=dtype))
    opt = fused_optim.Lion([p], lr=0.125, betas=(0.5, 0.75), weight_decay=0.5, backend=backend)
    # step 1 (m = 0): sign(g / 2): -1, +1, 0 (zero grad), +1
    _step(opt, p, [-2.0, 0.25, 0.0, 1.0])
    expected = torch.tensor([1.0 * 15 / 16 + 0.125, 1.0 * 15 / 16 - 0.125, -0.5 * 15 / 16, 2.0 * 15 / 16 - 0.125])
    assert torch.equal(p.detach().double(), expected.double())
    m = torch.tensor([-0.5, 0.0625, 0.0, 0.25])  # (1 - 3/4) g
    assert torch.equal(opt.state[p]["exp_avg"].double(), m.double())
    # step 2: c = m/2 + g/2; element 0 ties (-0.25 + 0.25 = 0): decay only
    _step(opt, p, [0.5, -1.0, 0.0, -0.25])
    expected = expected * 15 / 16 - 0.125 * torch.tensor([0.0, -1.0, 0.0, 0.0])
    assert torch.equal(p.detach().double(), expected.double())
    assert torch.equal(opt.state[p]["exp_avg"].double(),
                       (m * 0.75 + 0.25 * torch.tensor([0.5, -1.0, 0.0, -0.25])).double())
    assert float(opt.state[p]["step"]) == 2.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_nan_grad_poisons_only_its_element(backend):
    p = torch.nn.Parameter(torch.ones(5))
    opt = fused_optim.Lion([p], lr=0.1, backend=backend)
    _step(opt, p, [0.1, math.nan, -0.1, 0.0, 1.0])
    assert torch.isnan(p[1]) and torch.isnan(opt.state[p]["exp_avg"][1])
    assert torch.equal(p.detach()[[0, 2, 3, 4]], torch.tensor([0.9, 1.1, 1.0, 0.9]))


def test_defaults_and_bad_hyperparameters():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = fused_optim.Lion([p], backend="torch")
    assert (opt.defaults["lr"], opt.defaults["betas"], opt.defaults["weight_decay"]) == (1e-4, (0.9, 0.99), 0.0)
    for bad in (dict(lr=-1.0), dict(betas=(1.5, 0.9)), dict(betas=(0.9, -0.1)), dict(weight_decay=-0.1),
                dict(lr=math.nan)):
        with pytest.raises(ValueError):
            fused_optim.Lion([p], **bad)
