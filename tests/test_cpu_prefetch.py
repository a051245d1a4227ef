"""The cpu backend's update loops prefetch their streams ahead (csrc/cpu/prefetch.h): the loop
runs in blocks, with a last range of what is left, and a tensor shorter than the distance runs
as one range. None of that may change a bit: every optimizer, every registry case and every
bf16 param storage mode gives the same params and states with prefetches off, at the
default distance and at others, on tensors around the block and distance boundaries."""
import pytest
import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")

# around one block (64) past the default distance (512), a multiple of both, a few blocks,
# and two chunks (65536 + 4465): the blocked loop, its last range and the short tensors
SIZES = (5, 511, 575, 576, 577, 640, 5000, 70001)
BF16_MODES = {"master_weights": {"master_weights": True}, "param_remainders": {"param_remainders": True},
              "stochastic_rounding": {"stochastic_rounding": True, "seed": 11}}
CASES = [(name, case, torch.float32, {}) for name, spec in OPTIMIZERS.items() for case in spec.cases]
CASES += [(name, "default", torch.bfloat16, options) for name in OPTIMIZERS for options in BF16_MODES.values()]


def _cpu():
    from fused_optim import _cpu

    return _cpu


@pytest.fixture
def restore_distance():
    cpu = _cpu()
    before = cpu.prefetch_distance()
    yield cpu
    cpu.set_prefetch_distance(before)


def _run(name, case, dtype, options, distance):
    """Three steps over tensors of SIZES with the given prefetch distance: params and states."""
    _cpu().set_prefetch_distance(distance)
    gen = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter((torch.randn(n, generator=gen) * 0.1).to(dtype)) for n in SIZES]
    spec = OPTIMIZERS[name]
    opt = spec.cls(params, **spec.cases[case], **options, backend="cpu")
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        opt.step()
    states = [{k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for p in params]
    return [p.detach().clone() for p in params], states


@pytest.mark.parametrize("name,case,dtype,options", CASES,
                         ids=[f"{n}-{c}-{str(d)[6:]}-{'-'.join(o) or 'plain'}" for n, c, d, o in CASES])
def test_prefetches_change_no_bit(name, case, dtype, options, restore_distance):
    off = _run(name, case, dtype, options, 0)
    for distance in (restore_distance.default_prefetch_distance, 64, 4096):
        on = _run(name, case, dtype, options, distance)
        for before, after in zip(off[0], on[0]):
            assert torch.equal(before, after), f"params differ at distance {distance}"
        for before, after in zip(off[1], on[1]):
            assert before.keys() == after.keys()
            for key in before:
                assert torch.equal(before[key], after[key]), f"{key} differs at distance {distance}"


@pytest.mark.parametrize("bad", [-64, 100, 65536 + 64])
def test_a_bad_distance_raises_and_changes_nothing(bad, restore_distance):
    cpu = restore_distance
    cpu.set_prefetch_distance(128)
    with pytest.raises(ValueError, match="multiple of 64"):
        cpu.set_prefetch_distance(bad)
    assert cpu.prefetch_distance() == 128


def test_the_default_distance_is_in_force():
    cpu = _cpu()
    assert cpu.prefetch_distance() == cpu.default_prefetch_distance == 512
