"""torch.library custom ops around the backends' step functions.

torch.compile cannot trace into a native call that takes raw addresses (nor into the host
reads of step counters the torch and cpu backends do), so each step function of a backend
becomes one operator, `fused_optim::<backend>_<function>`, with a schema that declares what
it mutates and a fake kernel that says what it returns. Dynamo then records one node per
call instead of breaking the graph, and functionalization knows which inputs change.

The optimizers call these operators while torch.compile traces them and the backend
functions directly in eager mode, where the dispatcher would only add overhead (~10 us per
call; measured in tests/test_compile.py's neighbour bench note). Both paths run the same
function, and tests/test_compile.py checks them against each other.
"""
from types import SimpleNamespace
from typing import Dict

import torch

_HYPER_MOMENTS = "float lr, float beta1, float beta2, float eps, float weight_decay"
_SCALING = "Tensor? grad_scale=None, Tensor? found_inf=None"

# The backend contract (backends.py) as operator schemas. Tensor(x!) marks what a call
# writes; steps are read only (the optimizer advances them after every call succeeded).
SCHEMAS: Dict[str, str] = {
    "adam_step": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor[] steps, *, " + _HYPER_MOMENTS + ", bool decoupled, "
        "bool amsgrad, bool maximize, " + _SCALING + ") -> ()"
    ),
    "adamomentum_step": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] max_exp_avg_sqs, Tensor[] steps, *, " + _HYPER_MOMENTS + ", bool decoupled, "
        "bool amsgrad, bool rectify, " + _SCALING + ") -> ()"
    ),
    "dualadam_step": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, *, "
        "Tensor global_step, " + _HYPER_MOMENTS + ", float switch_rate, " + _SCALING + ") -> ()"
    ),
    # Adai's pass 1 in either form writes nothing (adai_update updates v and the carried sums)
    "adai_second_moment": (
        "(Tensor[] params, Tensor[] grads, Tensor[] exp_avg_sqs, Tensor[] steps, *, float beta2, "
        "float weight_decay, bool decoupled, " + _SCALING + ", Tensor[]? v_sums=None) -> Tensor"
    ),
    "adai_clip_sums": (
        "(Tensor[] params, Tensor[] grads, Tensor[] exp_avg_sqs, Tensor[] steps, *, float beta2, "
        "float weight_decay, bool decoupled, float norm_type, Tensor? grad_scale=None, "
        "Tensor[]? v_sums=None) -> Tensor"
    ),
    "adai_update": (
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor(d!)[] beta1_prods, Tensor[] steps, *, float lr, float beta0, float beta2, float eps, "
        "float weight_decay, bool decoupled, Tensor vbar, " + _SCALING + ", Tensor(e!)[]? v_sums=None) -> ()"
    ),
}

_library = torch.library.Library("fused_optim", "FRAGMENT")
_registered: Dict[str, SimpleNamespace] = {}


def _fake_sum(params, grads, exp_avg_sqs, steps, **_):
    return torch.empty((), dtype=torch.float64, device=params[0].device)


def _fake_nothing(*_, **__):
    return None


def _fake_clip_sums(params, grads, exp_avg_sqs, steps, **_):
    return torch.empty(4, dtype=torch.float64, device=params[0].device)


_FAKES = {"adai_second_moment": _fake_sum, "adai_clip_sums": _fake_clip_sums}


def operators(backend: str, module) -> SimpleNamespace:
    """The operators of one backend (registered on first use): a namespace with one callable
    per function of the contract, each `torch.ops.fused_optim.<backend>_<function>`."""
    ops = _registered.get(backend)
    if ops is None:
        ops = SimpleNamespace()
        for function, schema in SCHEMAS.items():
            name = f"{backend}_{function}"
            _library.define(name + schema)
            _library.impl(name, getattr(module, function), "CompositeExplicitAutograd")
            fake = _FAKES.get(function, _fake_nothing)
            torch.library.register_fake(f"fused_optim::{name}", fake, lib=_library)
            setattr(ops, function, getattr(torch.ops.fused_optim, name))
        _registered[backend] = ops
    return ops
