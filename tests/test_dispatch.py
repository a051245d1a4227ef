"""fused_optim._dispatch: eager calls of the GPU backends' custom ops skip the dispatcher but
keep its visible effects (mutated tensors' version counters); traced calls go through the op."""
from typing import List

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fused_optim import _dispatch

CALLS = []


@_dispatch.custom_op("fused_optim_test::scale_", mutates_args=("xs",))
def _scale_(xs: List[torch.Tensor], ys: List[torch.Tensor], factor: float) -> None:
    CALLS.append("eager_fn")
    for x in xs:
        x.mul_(factor)


@_scale_.register_fake
def _(xs, ys, factor) -> None:
    CALLS.append("fake")


def test_eager_call_runs_the_function_and_bumps_versions_of_mutated_args_only():
    xs, ys = [torch.ones(3), torch.ones(2)], [torch.ones(4)]
    before = [t._version for t in xs + ys]
    CALLS.clear()
    _dispatch.call(_scale_, xs, ys, 2.0)
    assert CALLS == ["eager_fn"]
    assert all(torch.equal(x, torch.full_like(x, 2.0)) for x in xs)
    # mul_ bumped each x once, the call once more (as the op would); ys untouched
    assert [t._version for t in xs] == [v + 2 for v in before[:2]]
    assert ys[0]._version == before[2]


def test_under_a_dispatch_mode_the_op_runs():
    CALLS.clear()
    with FakeTensorMode():
        xs, ys = [torch.empty(3)], [torch.empty(4)]
        _dispatch.call(_scale_, xs, ys, 2.0)
    assert CALLS == ["fake"]


def test_plain_functions_are_called_as_they_are():
    seen = []
    _dispatch.call(lambda *args: seen.append(args), 1, 2)
    assert seen == [(1, 2)]
