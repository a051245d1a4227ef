"""Eager calls of the GPU backends' custom operators without the dispatcher.

The cuda and triton backends define each native call as a torch.library custom op, so that
torch.compile and fake-tensor tracing see one opaque operator with declared mutations. In
eager mode the dispatcher adds little but cost: it converts every tensor of every list argument
and bumps each mutated tensor's version counter from Python, a large share of a step's host
time for a model of many tensors (bench/NOTES.md has the profile).
`call` runs the op's function directly there and bumps the versions in one call; under
torch.compile or any dispatch mode (fake tensors, functionalization, make_fx) it calls the op.
"""
from typing import Any, Callable, List, Sequence

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def custom_op(name: str, mutates_args: Sequence[str]):
    """torch.library.custom_op that keeps the undecorated function as `.eager_fn`."""
    def wrap(fn: Callable):
        op = torch.library.custom_op(name, mutates_args=tuple(mutates_args))(fn)
        op.eager_fn = fn
        op.mutated_positions = [list(_param_names(fn)).index(a) for a in mutates_args]
        return op
    return wrap


def _param_names(fn: Callable):
    import inspect

    return inspect.signature(fn).parameters


def _increment_versions_at_once() -> bool:
    # newer torch (2.6 on, checked) takes the whole list in one call; torch 2.4 one tensor at a time
    try:
        torch._C._increment_version([torch.empty(0)])
        return True
    except (RuntimeError, TypeError):
        return False


def _bump_versions_one_by_one(tensors: List[torch.Tensor]) -> None:
    for t in tensors:
        torch._C._increment_version(t)


_bump_versions = torch._C._increment_version if _increment_versions_at_once() else _bump_versions_one_by_one


def call(op: Any, *args: Any) -> Any:
    """op(*args), bypassing the dispatcher in plain eager mode (positional arguments only).
    Anything but an op made by custom_op above (a test's recording wrapper) is called as is."""
    eager_fn = getattr(op, "eager_fn", None)
    if eager_fn is None or torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return op(*args)
    result = eager_fn(*args)
    mutated: List[torch.Tensor] = [t for i in op.mutated_positions for t in args[i]]
    if mutated:
        _bump_versions(mutated)
    return result
