"""The step lane (fused_optim/optimizers/_step_lane.py): once every group's plan held for a
whole step, the next steps of a one-pass optimizer on the cpu backend run in a few calls, and
any change the lane does not cover sends the step the general way. As in test_step_plan.py,
two optimizers run side by side on equal copies, one that never plans, and must stay bitwise
equal; here every change is applied while the lane is in use, and whether the lane took each
step is asserted."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fused_optim
from fused_optim.optimizers._adai_lane import AdaiLane
from fused_optim.optimizers._step_lane import OnePassLane, lane_class
from fused_optim.registry import OPTIMIZERS

from .test_step_plan import Twins, _grads

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")

LANE = [name for name, spec in OPTIMIZERS.items() if lane_class(spec.cls) is not None]
# one of each kind of lane, for the tests of what leaves it
KINDS = ["AdamW", "Adai"]


def _watch_lane(optimizer):
    """Whether the next step went through the optimizer's current lane."""
    taken = []
    lane = optimizer._lane
    if lane is not None:
        original = lane.step

        def spy(opt):
            taken.append(original(opt))
            return taken[-1]

        lane.step = spy
    return lambda: any(taken)


def step(twins, lane, after_grads=None):
    """One step of both twins; lane: whether the planned twin's step must take its lane."""
    taken = _watch_lane(twins.planned)
    twins.step(after_grads=after_grads)
    assert taken() == lane, f"lane taken: {taken()}, expected {lane}"


def in_the_lane(name="AdamW", **kwargs):
    """Twins whose planned one steps through its lane: the full path, a planned step, the lane."""
    twins = Twins(name, "cpu", **kwargs)
    step(twins, False)
    step(twins, False)
    step(twins, True)
    return twins


def snapshot(opt, params):
    """Copies of the params and of their states."""
    return [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params]


def assert_unchanged(opt, params, saved):
    """Params and states equal to their snapshot, no state added or removed."""
    for p, (value, state) in zip(params, saved):
        assert torch.equal(p.detach(), value)
        assert opt.state[p].keys() == state.keys()
        for key, copy_ in state.items():
            assert torch.equal(opt.state[p][key], copy_), key


def test_every_optimizer_takes_a_lane():
    """The one-pass lane for per-param counters (Adam family, Lion) and DualAdam's global
    step; Adai's own for its two passes."""
    kinds = {name: lane_class(spec.cls) for name, spec in OPTIMIZERS.items()}
    assert kinds == {name: AdaiLane if name in ("Adai", "AdaiW") else OnePassLane for name in OPTIMIZERS}


@pytest.mark.parametrize("name,case", [(n, c) for n in LANE for c in OPTIMIZERS[n].cases])
def test_every_case_in_the_lane_equals_the_full_path(name, case):
    twins = in_the_lane(name, **OPTIMIZERS[name].cases[case])
    for _ in range(3):
        step(twins, True)


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("kwargs", [dict(max_grad_norm=1.0), dict(lr=torch.tensor(0.01))],
                         ids=["clipping", "tensor lr"])
def test_no_lane_where_a_step_reads_more(name, kwargs):
    twins = Twins(name, "cpu", **kwargs)
    for _ in range(4):
        step(twins, False)
    assert twins.planned._lane is None


@pytest.mark.parametrize("name", KINDS)
def test_frozen_group_stays_in_the_lane_until_it_has_grads(name):
    twins = Twins(name, groups=[([0, 1, 2], {}), ([3, 4], {"lr": 0.01})])
    frozen = lambda opt, ps: [setattr(p, "grad", None) for p in ps[3:]]
    step(twins, False, frozen)
    step(twins, False, frozen)
    step(twins, True, frozen)
    step(twins, False)  # its grads are back: the general way, which plans the group
    step(twins, False)
    step(twins, True)


def _new_data(opt, ps):
    ps[1].data = ps[1].data.clone() + 1.0


def _state_tensor_replaced(opt, ps):
    opt.state[ps[2]]["exp_avg_sq"] = opt.state[ps[2]]["exp_avg_sq"].clone() * 0.5


def _step_counter_replaced(opt, ps):
    opt.state[ps[2]]["step"] = opt.state[ps[2]]["step"].clone() + 3


def _state_given_new_data(opt, ps):
    opt.state[ps[0]]["exp_avg"].data = opt.state[ps[0]]["exp_avg"].data.clone() * 2


def _state_dict_replaced(opt, ps):
    opt.state[ps[4]] = {k: v.clone() for k, v in opt.state[ps[4]].items()}


def _state_removed(opt, ps):
    opt.state.pop(ps[1])


def _params_swapped(opt, ps):
    opt.param_groups[0]["params"].reverse()


def _param_removed(opt, ps):
    opt.param_groups[0]["params"].pop(0)


def _a_grad_missing(opt, ps):
    ps[2].grad = None


def _backend_asked_again(opt, ps):
    opt._backend_request = "cpu" if opt._backend_request != "cpu" else "auto"


# changes applied after the grads are set, each before a step the lane must not take
CHANGES = {
    "new param data": _new_data,
    "state tensor replaced": _state_tensor_replaced,
    "step counter replaced": _step_counter_replaced,
    "state given new data": _state_given_new_data,
    "state dict replaced": _state_dict_replaced,
    "state removed": _state_removed,
    "params swapped": _params_swapped,
    "param removed": _param_removed,
    "backend asked again": _backend_asked_again,
}


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("change", CHANGES)
def test_a_change_leaves_the_lane_and_it_comes_back(name, change):
    twins = in_the_lane(name)
    step(twins, False, CHANGES[change])  # the general way: checks, a new plan
    step(twins, False)  # the new plan's first step, which makes the lane
    step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_a_grad_missing_leaves_the_lane(name):
    """The grads are back at the next step: not the pattern of the plan made without one."""
    twins = in_the_lane(name)
    step(twins, False, _a_grad_missing)
    step(twins, False)
    step(twins, False)
    step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_a_schedule_takes_the_general_planned_step_then_the_lane(name):
    """An lr/betas edit is a new value: validated the general way (where the plan holds)."""
    twins = in_the_lane(name)
    for lr in (0.5, 0.01):
        twins.both(lambda opt, ps: opt.param_groups[0].update(lr=lr, betas=(0.5, 0.9)))
        step(twins, False)
        step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_a_loaded_state_dict_leaves_the_lane(name):
    twins = in_the_lane(name)
    saved = copy.deepcopy(twins.planned.state_dict())
    step(twins, True)
    twins.both(lambda opt, ps: opt.load_state_dict(saved))
    step(twins, False)
    step(twins, False)
    step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_a_group_added_leaves_the_lane(name):
    twins = in_the_lane(name)
    twins.add_group()
    step(twins, False)
    step(twins, False)
    step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_grad_scaler_steps_leave_the_lane(name):
    twins = in_the_lane(name)
    for found in (0.0, 1.0):
        def scaled(opt, ps, found=found):
            opt.grad_scale = torch.tensor(4.0)
            opt.found_inf = torch.tensor(found)
        twins.both(scaled)
        step(twins, False)
    twins.both(lambda opt, ps: (delattr(opt, "grad_scale"), delattr(opt, "found_inf")))
    step(twins, False)  # planned, and makes the lane again
    step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_thread_count_changes_stay_in_the_lane(name):
    twins = in_the_lane(name)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            step(twins, True)
    finally:
        torch.set_num_threads(before)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", KINDS)
def test_a_dispatch_mode_sees_the_operation(name):
    """Under a TorchDispatchMode the step calls the registered operator (the mode sees it)
    instead of the lane or a plan's address lists; the results are the same."""
    twins = in_the_lane(name)
    recorder = _Recorder()
    with recorder:
        step(twins, False)
    assert any("fused_optim" in op for op in recorder.ops)
    if name == "Adai":
        # no plan under the mode: the carried sums were checked one by one against records
        # the planned steps do not keep, so they were read again into new tensors (a new plan)
        step(twins, False)
    step(twins, False)
    step(twins, True)


@pytest.mark.parametrize("name", KINDS)
def test_refusals_in_the_lane_change_nothing(name):
    """A resized param, a grad of another dtype and a bad lr, each met while in the lane: the
    general path refuses the step before anything is written."""
    twins = in_the_lane(name)
    opt, ps = twins.planned, twins.params
    before = snapshot(opt, ps)
    _grads(ps, 99)
    ps[0].grad.data = ps[0].grad.data.double()
    with pytest.raises(ValueError, match="a gradient of dtype torch.float64"):
        opt.step()
    _grads(ps, 100)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    p = ps[3]
    with torch.no_grad():
        p.requires_grad_(False).resize_(100).requires_grad_(True)
    p.grad = torch.ones(100)
    with pytest.raises(ValueError, match="does not fit its parameter"):
        opt.step()
    assert_unchanged(opt, ps[:3], before[:3])


@pytest.mark.parametrize("name", KINDS)
def test_what_the_lane_writes_has_its_version_bumped(name):
    """As the dispatcher would after an in-place op: autograd's saved-tensor checks and Adai's
    carried sums (its exp_avg_sq_sum entries are written too) rely on it. The twin that never
    plans bumped the same counters."""
    twins = in_the_lane(name)
    opt = twins.planned
    written = [p for p in twins.params] + [v for p in twins.params for k, v in opt.state[p].items() if k != "step"]
    before = [t._version for t in written]
    step(twins, True)
    assert all(t._version > v for t, v in zip(written, before))
    full_written = [p for p in twins.full_params] + [
        v for p in twins.full_params for k, v in twins.full.state[p].items() if k != "step"]
    assert [t._version for t in written] == [t._version for t in full_written]


@pytest.mark.parametrize("name", KINDS)
def test_a_param_shrunk_in_place_is_refused_in_the_lane(name):
    """A resize that shrinks keeps the param's address: its new grad's shape is what the plan
    sees change, and the general path refuses the step before anything is written."""
    twins = in_the_lane(name)
    opt, ps = twins.planned, twins.params
    p = ps[3]
    address = p.data_ptr()
    with torch.no_grad():
        p.requires_grad_(False).resize_(p.numel() // 2).requires_grad_(True)
    assert p.data_ptr() == address
    _grads(ps, 101)
    before = snapshot(opt, ps)
    with pytest.raises(ValueError, match="does not fit its parameter"):
        opt.step()
    assert_unchanged(opt, ps, before)
