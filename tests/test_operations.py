"""fused_optim.operations: each declaration yields its lists, what it writes and its
hyperparameters; every backend here registers every declared operation; an eager call runs
the backend's function and bumps the version counters of what it writes (as the dispatcher
would), while under a dispatch mode the operator runs (its fake, under fake tensors)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fused_optim import backends, operations
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS


def test_a_declaration_derives_its_arguments():
    adam = operations.OPERATIONS["adam_step"]
    assert adam.lists == ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps")
    assert adam.mutated == ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    assert adam.hyperparameters == ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled", "amsgrad", "maximize")
    assert adam.scalars == ("grad_scale", "found_inf")
    assert adam.state_lists() == ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    update = operations.OPERATIONS["adai_update"]
    assert update.mutated[-1] == "v_sums" and "vbar" in update.scalars


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_one_pass_optimizer_gives_its_operation_exactly_the_declared_hyperparameters(name):
    spec = OPTIMIZERS[name]
    if spec.cls.operation is None:
        pytest.skip(f"{name} runs its own passes")
    for case in spec.cases.values():
        opt = spec.cls([torch.nn.Parameter(torch.zeros(1))], **case, backend="torch")
        hyper = opt.hyper(opt.param_groups[0], 0)
        assert set(hyper) == set(operations.OPERATIONS[spec.cls.operation].hyperparameters)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_backend_registers_every_declared_operation(backend):
    ops = backends.implementation(backend)
    assert set(operations.implementations(backend)) == set(operations.OPERATIONS)
    for name in operations.OPERATIONS:
        assert callable(getattr(ops, name))
        assert hasattr(torch.ops.fused_optim, f"{backend}_{name}")


def _lion_arguments():
    params, grads = [torch.ones(3), torch.ones(2)], [torch.ones(3), -torch.ones(2)]
    exp_avgs, steps = [torch.zeros(3), torch.zeros(2)], [torch.tensor(0.0), torch.tensor(0.0)]
    return [params, grads, exp_avgs, steps], dict(lr=0.5, beta1=0.9, beta2=0.99, weight_decay=0.0)


def test_an_eager_call_runs_the_function_and_bumps_the_versions_of_what_it_writes():
    lists, hyper = _lion_arguments()
    versions = [[t._version for t in column] for column in lists]
    backends.implementation("torch").lion_step(*lists, **hyper)
    assert torch.equal(lists[0][0], torch.full((3,), 0.5)) and torch.equal(lists[0][1], torch.full((2,), 1.5))
    for column, before, written in zip(lists, versions, [True, False, True, False]):
        for t, v in zip(column, before):
            assert (t._version > v) == written


def test_under_a_dispatch_mode_the_operator_runs(monkeypatch):
    call = backends.implementation("torch").lion_step
    calls = []
    original = call.function
    monkeypatch.setattr(call, "function", lambda *a, **k: calls.append("function") or original(*a, **k))
    with FakeTensorMode():
        lists, hyper = _lion_arguments()
        call(*lists, **hyper)  # the operator's fake: nothing to compute
    assert calls == []
    lists, hyper = _lion_arguments()
    call(*lists, **hyper)
    assert calls == ["function"]
