"""fused_optim._cpu checks its raw arguments and raises ValueError instead of touching
memory it was not given."""
import pytest
import torch

import fused_optim

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")


def _adam(lists, numels, steps=(1.0,), dtype=0, threads=1):
    from fused_optim import _cpu

    _cpu.adam_step(lists, list(numels), list(steps), dtype, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                   weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False, num_threads=threads)


def _tensors(n=8, dtype=torch.float32):
    return [torch.zeros(n, dtype=dtype) for _ in range(4)]


def test_valid_call_updates():
    p, g, m, v = _tensors()
    g.fill_(1.0)
    _adam([[t.data_ptr()] for t in (p, g, m, v)], [8])
    assert torch.all(p < 0)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a[:3], "expected 4 tensor lists"),
    (lambda a: [a[0] + a[0]] + a[1:], "entries"),
    (lambda a: [[0]] + a[1:], "null address"),
    (lambda a: [[a[0][0] + 2]] + a[1:], "not aligned"),
])
def test_bad_address_lists(mutate, match):
    p, g, m, v = _tensors()
    before = p.clone()
    with pytest.raises(ValueError, match=match):
        _adam(mutate([[t.data_ptr()] for t in (p, g, m, v)]), [8])
    assert torch.equal(p, before)


def test_bad_scalars():
    p, g, m, v = _tensors()
    lists = [[t.data_ptr()] for t in (p, g, m, v)]
    with pytest.raises(ValueError, match="dtype code"):
        _adam(lists, [8], dtype=7)
    with pytest.raises(ValueError, match="steps"):
        _adam(lists, [8], steps=(1.0, 2.0))
    with pytest.raises(ValueError, match="num_threads"):
        _adam(lists, [8], threads=0)
    with pytest.raises(ValueError, match="negative numel"):
        _adam(lists, [-1])


def test_adai_stores_subnormal_beta1_prod_as_zero_and_leaves_the_callers_mode():
    """The Adai update pass stores a beta1_prod below the smallest normal float as 0 (x86
    multiplies subnormals slowly; csrc/cpu/adai.cpp); the caller keeps its floating-point
    mode, subnormals included."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert float(tiny * 1.0) != 0.0  # this thread keeps denormals
    p = torch.zeros(1000, requires_grad=True)
    opt = fused_optim.Adai([p], lr=0.1, backend="cpu")
    p.grad = torch.ones(1000)
    opt.step()
    opt.state[p]["beta1_prod"].fill_(1e-39)  # subnormal: stored as 0 by the next update
    opt.step()
    assert torch.equal(opt.state[p]["beta1_prod"], torch.zeros(1000))
    assert float(tiny * 1.0) != 0.0
