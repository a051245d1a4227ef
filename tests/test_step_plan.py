"""The step plan (fused_optim/optimizers/_step_plan.py): a group's step reuses what it prepared
while nothing it depends on changed, and takes the full way (checks, errors, a new plan) as
soon as something did; the same for the hyperparameters a group's entries give (cached by
their values). Each test runs two optimizers side by side on equal copies: one with plans,
one that never makes any (the full path every step, whose results the parity tests compare
with the fp64 reference); every step and every change applied to both must leave
them bitwise equal, and the planned one must really have used its plan where nothing changed.
"""
import copy

import pytest
import torch

from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS

FUSED = [b for b in CPU_BACKENDS if b != "torch"]
pytestmark = pytest.mark.skipif(not FUSED, reason="no fused backend serves CPU tensors here")


def _params(count=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7,), (3, 5), (1,), (130,), (2, 2, 3)][:count]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).float()) for s in shapes]


def _grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)


class Twins:
    """The same optimizer twice on equal params: `planned` makes step plans, `full` never
    (and validates its hyperparameters at every step)."""

    def __init__(self, name="AdamW", backend="cpu", params=None, groups=None, **kwargs):
        spec = OPTIMIZERS[name]
        kwargs = {**spec.cases[next(iter(spec.cases))], **kwargs}
        self.params = params if params is not None else _params()
        self.full_params = [torch.nn.Parameter(p.detach().clone()) for p in self.params]

        def argument(ps):
            if groups is None:
                return ps
            return [{**extra, "params": [ps[i] for i in where]} for where, extra in groups]

        self.planned = spec.cls(argument(self.params), backend=backend, **kwargs)
        self.full = spec.cls(argument(self.full_params), backend=backend, **kwargs)
        self.full._make_plans = lambda batches: None
        self.full._group_hyper = self.full.hyper  # nor cached hyperparameters
        self.seed = 0

    def both(self, change):
        """Applies change(optimizer, params) to each twin."""
        change(self.planned, self.params)
        change(self.full, self.full_params)

    def add_group(self, seed=7):
        """A new group of one new param (equal in both twins) added to each twin."""
        new = {id(self.planned): _params(1, seed=seed)[0]}
        new[id(self.full)] = torch.nn.Parameter(new[id(self.planned)].detach().clone())

        def add(opt, ps):
            ps.append(new[id(opt)])
            opt.add_param_group({"params": [new[id(opt)]]})

        self.both(add)

    def step(self, expect_planned=None, after_grads=None):
        """One step of both on equal grads; expect_planned: whether the planned twin's step
        (every group of it) must take its plan; after_grads(optimizer, params): a change
        applied to both once the grads are set."""
        self.seed += 1
        for ps in (self.params, self.full_params):
            _grads(ps, self.seed)
        if after_grads is not None:
            self.both(after_grads)
        used = _count_planned(self.planned)
        self.planned.step()
        self.full.step()
        if expect_planned is not None:
            assert (used() > 0) == expect_planned, f"plan used: {used() > 0}, expected {expect_planned}"
        self.assert_equal()

    def assert_equal(self):
        for p, q in zip(self.params, self.full_params):
            assert torch.equal(p.detach(), q.detach()), "params differ"
            a, b = self.planned.state.get(p, {}), self.full.state.get(q, {})
            assert a.keys() == b.keys()
            for key in a:
                if torch.is_tensor(a[key]):
                    assert torch.equal(a[key], b[key]), f"state {key!r} differs"


def _count_planned(optimizer):
    """A counter of the batches the next step takes from a plan, through the general path or
    the step lane (_step_lane.py: all of them at once)."""
    seen = []
    original = optimizer._planned_batches

    def spy(*args, **kwargs):
        batches = original(*args, **kwargs)
        if batches is not None:
            seen.extend(batches)
        return batches

    optimizer._planned_batches = spy
    lane = optimizer._lane
    if lane is not None:
        lane_step = lane.step

        def lane_spy(opt):
            taken = lane_step(opt)
            if taken:
                seen.extend(lane.calls)
            return taken

        lane.step = lane_spy
    return lambda: len(seen)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_planned_steps_equal_the_full_path(name, backend):
    """Every optimizer: the first step goes the full way and plans; the next ones take the
    plan and give the full path's bits."""
    twins = Twins(name, backend)
    twins.step(expect_planned=False)
    for _ in range(3):
        twins.step(expect_planned=True)
    assert twins.planned._plans and not twins.full._plans


@pytest.mark.parametrize("name,case", [(n, c) for n, spec in OPTIMIZERS.items() for c in spec.cases])
def test_every_hyperparameter_case_planned(name, case):
    spec = OPTIMIZERS[name]
    twins = Twins(name, "cpu", **spec.cases[case])
    for expect in (False, True, True):
        twins.step(expect_planned=expect)


def test_a_param_resized_is_refused_as_without_a_plan():
    """A param given new data of another shape (its state no longer fits): the plan does not
    hold, and the full path refuses the step, changing nothing."""
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    for opt, ps in ((twins.planned, twins.params), (twins.full, twins.full_params)):
        ps[0].data = torch.zeros(9)
        ps[0].grad = torch.ones(9)
        before = copy.deepcopy(opt.state_dict())
        with pytest.raises(ValueError, match="does not fit its parameter"):
            opt.step()
        after = opt.state_dict()
        assert all(torch.equal(before["state"][i][k], after["state"][i][k]) for i in before["state"]
                   for k in before["state"][i])


def test_a_param_resized_in_place_is_refused():
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    p = twins.params[3]
    address = p.data_ptr()
    with torch.no_grad():  # smaller: the same address, so only the shapes tell
        p.requires_grad_(False).resize_(100).requires_grad_(True)
    assert p.data_ptr() == address
    p.grad = torch.ones(100)
    with pytest.raises(ValueError, match="does not fit its parameter"):
        twins.planned.step()


def test_new_param_data_of_the_same_shape_is_updated():
    """p.data = another tensor (a move, a swap as FSDP1 does): the step updates the new data."""
    twins = Twins()
    twins.step()
    twins.both(lambda opt, ps: setattr(ps[1], "data", ps[1].data.clone() + 1.0))
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


def test_a_loaded_state_dict_is_used():
    twins = Twins()
    for _ in range(3):
        twins.step()
    saved = copy.deepcopy(twins.planned.state_dict())
    twins.step(expect_planned=True)
    twins.both(lambda opt, ps: opt.load_state_dict(saved))
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq", "step"])
def test_a_state_tensor_replaced_in_its_dict_is_used(key):
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    twins.both(lambda opt, ps: opt.state[ps[2]].__setitem__(key, opt.state[ps[2]][key].clone() * 0.5))
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


def test_a_state_tensor_given_new_data_is_used():
    """state.data = another tensor: the memory the plan took its address from is no longer the
    state's (the plan holds the old tensor, so that memory is not reused meanwhile)."""
    twins = Twins()
    twins.step()
    twins.both(lambda opt, ps: setattr(opt.state[ps[0]]["exp_avg_sq"], "data",
                                       opt.state[ps[0]]["exp_avg_sq"].data.clone() * 2))
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


def test_a_state_dict_replaced_is_used():
    twins = Twins()
    twins.step()
    twins.both(lambda opt, ps: opt.state.__setitem__(ps[4], {k: v.clone() for k, v in opt.state[ps[4]].items()}))
    twins.step(expect_planned=False)


def test_a_state_removed_starts_again():
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    twins.both(lambda opt, ps: opt.state.pop(ps[1]))
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


def test_params_added_to_or_removed_from_a_group():
    extra = _params(1, seed=5)[0]
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    copies = {id(twins.planned): extra, id(twins.full): torch.nn.Parameter(extra.detach().clone())}

    def add(opt, ps):
        ps.append(copies[id(opt)])
        opt.param_groups[0]["params"].append(copies[id(opt)])

    twins.both(add)
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)

    def remove(opt, ps):
        opt.param_groups[0]["params"].pop(0)

    twins.both(remove)
    twins.step(expect_planned=False)


def test_params_swapped_in_a_group():
    twins = Twins()
    twins.step()
    twins.both(lambda opt, ps: opt.param_groups[0]["params"].reverse())
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


def test_hyperparameters_change_without_a_new_plan():
    """A schedule edits lr and betas every step: read at every step, the plan holds."""
    twins = Twins()
    twins.step()
    for lr in (0.5, 0.01, 0.0):
        twins.both(lambda opt, ps: opt.param_groups[0].update(lr=lr, betas=(0.5, 0.9)))
        twins.step(expect_planned=True)


def test_a_group_option_that_shapes_the_step_makes_a_new_plan():
    """amsgrad adds a state, state_dtype changes the states' dtype: no plan for the old ones."""
    twins = Twins("Adam")
    twins.step()
    twins.both(lambda opt, ps: opt.param_groups[0].update(amsgrad=True))
    twins.step(expect_planned=False)
    assert "max_exp_avg_sq" in twins.planned.state[twins.params[0]]
    twins.step(expect_planned=True)


def test_grads_appearing_and_disappearing():
    twins = Twins()
    twins.step()
    twins.step(expect_planned=False, after_grads=lambda opt, ps: setattr(ps[2], "grad", None))
    twins.step(expect_planned=False)  # every grad again: not the pattern planned
    twins.step(expect_planned=True)


def test_a_grad_of_a_new_dtype_is_refused():
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    p = twins.params[0]
    p.grad.data = p.grad.data.double()
    before = {k: v.clone() for k, v in twins.planned.state[p].items()}
    with pytest.raises(ValueError, match="a gradient of dtype torch.float64"):
        twins.planned.step()
    assert all(torch.equal(before[k], v) for k, v in twins.planned.state[p].items())


def test_a_non_contiguous_grad_is_staged():
    twins = Twins()
    twins.step()

    def transposed_grad(opt, ps):
        g = ps[1].grad
        ps[1].grad = g.t().contiguous().t()

    twins.step(expect_planned=False, after_grads=transposed_grad)


def test_a_failed_planned_step_changes_nothing():
    """A bad hyperparameter raises before the plan is used; a NaN norm with
    error_if_nonfinite raises after the norm: either way params and states stay as they were."""
    twins = Twins(max_grad_norm=1.0, error_if_nonfinite=True)
    twins.step()
    twins.step(expect_planned=True)
    opt, ps = twins.planned, twins.params
    snapshot = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in ps]
    _grads(ps, 99)
    ps[0].grad[0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        opt.step()
    opt.param_groups[0]["lr"] = -1.0
    _grads(ps, 100)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    for p, (value, state) in zip(ps, snapshot):
        assert torch.equal(p.detach(), value)
        assert all(torch.equal(state[k], v) for k, v in opt.state[p].items())


def test_several_groups_and_a_group_added():
    twins = Twins(groups=[([0, 1], {}), ([2, 3, 4], {"lr": 0.01})])
    twins.step()
    twins.step(expect_planned=True)
    twins.add_group()
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


def test_stochastic_rounding_keys_follow_the_params_before_the_group():
    """Stochastic rounding keys each param by its index among all the optimizer's params: a
    param added to the first group shifts the second group's indices, so that group's plan
    must not hold either."""
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(64, generator=g).bfloat16()) for _ in range(4)]
    twins = Twins(params=params, groups=[([0, 1], {}), ([2, 3], {})], stochastic_rounding=True, lr=1e-2)
    twins.step()
    twins.step(expect_planned=True)
    new = {id(twins.planned): torch.nn.Parameter(torch.randn(64, generator=g).bfloat16())}
    new[id(twins.full)] = torch.nn.Parameter(new[id(twins.planned)].detach().clone())

    def add_to_first(opt, ps):
        ps.insert(2, new[id(opt)])
        opt.param_groups[0]["params"].append(new[id(opt)])

    twins.both(add_to_first)
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)


@pytest.mark.parametrize("option", ["master_weights", "param_remainders"])
def test_param_storage_modes_planned(option):
    g = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(n, generator=g).bfloat16()) for n in (64, 3, 129)]
    twins = Twins(params=params, lr=1e-2, **{option: True})
    twins.step(expect_planned=False)
    twins.step(expect_planned=True)
    twins.step(expect_planned=True)


def test_grad_scaler_steps_planned():
    """GradScaler's scale and inf flag are read at every step; a skipped step advances nothing."""
    twins = Twins()
    twins.step()
    for found in (0.0, 1.0, 0.0):
        def scaled(opt, ps, found=found):
            opt.grad_scale = torch.tensor(4.0)
            opt.found_inf = torch.tensor(found)
        twins.both(scaled)
        twins.step(expect_planned=True)


def test_no_plan_under_torch_backend():
    twins = Twins(backend="torch")
    twins.step()
    twins.step(expect_planned=False)
    assert not twins.planned._plans


def test_a_copy_of_the_optimizer_plans_for_its_own_params():
    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    clone = copy.deepcopy(twins.planned)
    assert not clone._plans


def test_a_hyperparameter_edited_is_validated_again():
    """hyper() is cached by the group's entries: an edit, even to a value of another type
    that compares equal (0 == False), is validated again."""
    twins = Twins("Adam")
    twins.step()
    twins.step(expect_planned=True)
    twins.planned.param_groups[0]["amsgrad"] = 0
    with pytest.raises(ValueError, match="amsgrad must be True or False"):
        twins.planned.step()
    twins.planned.param_groups[0]["amsgrad"] = False
    twins.planned.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        twins.planned.step()


def test_tensor_hyperparameters_are_read_at_every_step():
    """An lr or betas tensor written in place takes effect at the next step."""
    twins = Twins("Adam")
    twins.both(lambda opt, ps: opt.param_groups[0].update(lr=torch.tensor(0.01), betas=(torch.tensor(0.9), 0.999)))
    twins.step()
    twins.both(lambda opt, ps: (opt.param_groups[0]["lr"].fill_(0.5), opt.param_groups[0]["betas"][0].fill_(0.5)))
    twins.step(expect_planned=True)


def test_no_plan_while_a_zero_partition_is_registered():
    """fused_optim.zero.attach can change a param's shard group (whether its norm and Adai's
    mean are all-reduced), which a plan would not see: while any partition is registered,
    every step goes the full way."""
    from fused_optim.optimizers import _sharding

    twins = Twins()
    twins.step()
    twins.step(expect_planned=True)
    elsewhere = torch.zeros(4)
    _sharding.register_partition(elsewhere, None, 4)
    try:
        assert _sharding.partitions_registered()
        twins.step(expect_planned=False)
    finally:
        del elsewhere  # (the registry forgets a partition when its tensor dies)
    assert not _sharding.partitions_registered()
    twins.step(expect_planned=True)
