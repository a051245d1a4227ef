"""The "torch" backend: fused_optim.reference behind the contract (fused_optim.operations).

The reference functions take each param's new step count as a float; the contract passes the
counters themselves (0-dim tensors holding the count BEFORE this step) and leaves them
unchanged. The reference runs on any device; reading a counter or found_inf on the host is
free for CPU tensors and a device sync for GPU tensors (the GPU backends read them in the
kernels instead). An operation whose effect is one reference function (its declaration names
it) is registered here without code of its own.
"""
from typing import List

import torch

from ._grad_scaling import skipped, unscaled
from .operations import OPERATIONS, implements
from .reference import adai as _adai


def _new_steps(steps: List[torch.Tensor]) -> List[float]:
    return [float(s) + 1.0 for s in steps]


def _one_reference_call(name: str, function):
    """The declared operation as a call of its reference function: nothing when found_inf,
    grads unscaled, step counters (per param or DualAdam's global one) as the new counts."""
    def run(*lists, grad_scale=None, found_inf=None, global_step=None, **hyper):
        if skipped(found_inf):
            return
        lists = list(lists)
        lists[1] = unscaled(lists[1], grad_scale)
        if global_step is not None:
            hyper["global_step"] = int(global_step.item()) + 1
        elif "steps" in OPERATIONS[name].lists:
            lists[-1] = _new_steps(lists[-1])
        function(*lists, **hyper)

    run.__name__ = name
    return run


for _name, _operation in OPERATIONS.items():
    if _operation.reference is not None:
        implements("torch", _name)(_one_reference_call(_name, _operation.reference_function()))


# v_sums (Adai's carried sums of exp_avg_sq, operations.py) are not kept here: pass 1 reads v
# itself, and Adai drops the sums after this backend's update.


@implements("torch", "adai_second_moment")
def adai_second_moment(params, grads, exp_avg_sqs, steps, *, grad_scale=None, found_inf=None, v_sums=None,
                       **hyper) -> torch.Tensor:
    """The reference's pass 1 on copies of v: like every backend's pass 1 it writes nothing
    (adai_update runs the v update), so that adai_clip_sums can stand in for it. The copies
    cost this fallback a read and a write of v; the values are the reference's bit for bit."""
    return _adai.adai_second_moment(params, unscaled(grads, grad_scale), [v.clone() for v in exp_avg_sqs],
                                    _new_steps(steps), **hyper)


@implements("torch", "adai_clip_sums")
def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, grad_scale=None, v_sums=None, **hyper) -> torch.Tensor:
    return _adai.adai_clip_sums(params, unscaled(grads, grad_scale), exp_avg_sqs, _new_steps(steps), **hyper)


@implements("torch", "adai_update")
def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, grad_scale=None, found_inf=None,
                v_sums=None, lr, beta0, eps, **hyper) -> None:
    if skipped(found_inf):
        return
    grads = unscaled(grads, grad_scale)
    new_steps = _new_steps(steps)
    # the v update of the reference's pass 1 (whose sum the optimizer already has), then pass 2
    _adai.adai_second_moment(params, grads, exp_avg_sqs, new_steps, beta2=hyper["beta2"],
                             weight_decay=hyper["weight_decay"], decoupled=hyper["decoupled"])
    _adai.adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, new_steps, lr=lr, beta0=beta0, eps=eps,
                      **hyper)
