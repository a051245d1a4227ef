"""Adai's step lane (fused_optim/optimizers/_adai_lane.py): its two passes and the mean of vhat
between them, run from kept native calls, must give the full path's bits (the twins of
test_step_plan.py, one of which never plans) over groups, dtypes and param storage modes; any
change to exp_avg_sq or its carried sum sends the step the general way; and a step that fails
in the lane changes nothing."""
import math

import pytest
import torch

import fused_optim
from fused_optim.optimizers.adai import V_SUM

from .test_step_lane import assert_unchanged, in_the_lane, snapshot, step
from .test_step_plan import Twins, _grads

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")


def _in_the_lane(twins):
    step(twins, False)  # the full way, which plans
    step(twins, False)  # the first planned step, which makes the lane
    for _ in range(3):
        step(twins, True)
    return twins


def _mixed_params():
    g = torch.Generator().manual_seed(5)
    return [torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64).to(dtype))
            for n, dtype in ((33, torch.float32), (7, torch.bfloat16), (130, torch.float64), (5, torch.float32),
                             (64, torch.bfloat16))]


def test_the_mean_spans_groups_and_dtypes_in_the_lane():
    """Two groups, three dtypes: five batches whose pass-1 sums make one mean."""
    twins = Twins("Adai", params=_mixed_params(), groups=[([0, 1, 2], {}), ([3, 4], {"lr": 0.05})])
    _in_the_lane(twins)
    assert len(twins.planned._lane.calls) == 5


@pytest.mark.parametrize("option", ["master_weights", "param_remainders", "stochastic_rounding"])
def test_param_storage_modes_in_the_lane(option):
    g = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(n, generator=g).bfloat16()) for n in (64, 3, 129)]
    _in_the_lane(Twins("Adai", params=params, lr=0.05, **{option: True}))


@pytest.mark.parametrize("name", ["Adai", "AdaiW"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_weight_decay_forms_in_the_lane(name, weight_decay):
    _in_the_lane(Twins(name, weight_decay=weight_decay))


def _exp_avg_sq_scaled(opt, ps):
    opt.state[ps[1]]["exp_avg_sq"].mul_(4.0)


def _exp_avg_sq_zeroed(opt, ps):
    opt.state[ps[3]]["exp_avg_sq"].zero_()


def _exp_avg_sq_replaced(opt, ps):
    opt.state[ps[0]]["exp_avg_sq"] = opt.state[ps[0]]["exp_avg_sq"] * 3.0


def _sum_not_known(opt, ps):
    opt.state[ps[2]][V_SUM].fill_(math.nan)


def _sum_deleted(opt, ps):
    # (after an edit torch cannot see, as the Adai docstring says)
    opt.state[ps[4]]["exp_avg_sq"].data.mul_(2.0)
    del opt.state[ps[4]][V_SUM]


def _sum_replaced(opt, ps):
    opt.state[ps[1]][V_SUM] = opt.state[ps[1]][V_SUM].clone()


# changes to exp_avg_sq or its carried sum, each made before a step the lane must not take
SUM_CHANGES = {
    "exp_avg_sq scaled in place": _exp_avg_sq_scaled,
    "exp_avg_sq zeroed": _exp_avg_sq_zeroed,
    "exp_avg_sq replaced": _exp_avg_sq_replaced,
    "sum not known (NaN)": _sum_not_known,
    "sum deleted": _sum_deleted,
    "sum replaced": _sum_replaced,
}


@pytest.mark.parametrize("change", SUM_CHANGES)
def test_a_change_to_the_sums_leaves_the_lane(change):
    twins = in_the_lane("Adai")
    step(twins, False, SUM_CHANGES[change])
    for _ in range(4):  # back in the lane within a few steps, the twins still equal
        twins.step()
    step(twins, True)


class _FailingNative:
    """The native module, but the `fail_at`-th call of `name` raises."""

    def __init__(self, native, name, fail_at):
        self.native, self.name, self.fail_at, self.calls = native, name, fail_at, 0

    def __getattr__(self, attribute):
        return getattr(self.native, attribute)

    def step_planned(self, name, *args):
        if name == self.name:
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("injected failure")
        return self.native.step_planned(name, *args)


def _failed_step(operation, seed):
    """Twins in the lane, then a step of the planned one whose second native call of
    `operation` raises: (twins, the params and states before it)."""
    twins = _in_the_lane(Twins("Adai", params=_mixed_params()))
    opt, ps = twins.planned, twins.params
    lane = opt._lane
    lane.native = _FailingNative(lane.native, operation, 2)
    _grads(ps, seed)
    before = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match="injected failure"):
        opt.step()
    lane.native = lane.native.native
    return twins, before


def test_a_failure_in_pass_one_changes_nothing():
    """Pass 1 writes nothing: a failure at the second batch's pass 1 (after the first batch's)
    leaves params, states, counters and carried sums as they were, and the next step equals
    the full path's."""
    twins, before = _failed_step("adai_second_moment", 50)
    assert_unchanged(twins.planned, twins.params, before)
    step(twins, True)


def test_a_failure_in_an_update_leaves_each_param_stepped_or_untouched():
    """As in the general path: the batches updated before the failure are stepped with their
    counters and sums, the others untouched."""
    twins, before = _failed_step("adai_update", 60)
    opt, ps = twins.planned, twins.params
    steps = [opt.state[p]["step"].item() - saved["step"].item() for p, (_, saved) in zip(ps, before)]
    assert sorted(set(steps)) == [0.0, 1.0]
    for p, advanced, (value, state) in zip(ps, steps, before):
        if advanced:
            assert not torch.equal(p.detach(), value)
        else:
            assert torch.equal(p.detach(), value)
            assert all(torch.equal(opt.state[p][key], saved) for key, saved in state.items())
