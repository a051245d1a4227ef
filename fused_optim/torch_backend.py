"""The "torch" backend: fused_optim.reference behind the backend contract (see backends.py).

The reference functions take each param's new step count as a float; the contract passes
the counters themselves (0-dim tensors holding the count BEFORE this step) and leaves them
unchanged. The reference runs on any device; reading a counter or found_inf on the host is
free for CPU tensors and a device sync for GPU tensors (the GPU backends read them in the
kernels instead).
"""
from typing import List

import torch

from . import reference
from ._grad_scaling import skipped, unscaled


def _new_steps(steps: List[torch.Tensor]) -> List[float]:
    return [float(s) + 1.0 for s in steps]


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, grad_scale=None, found_inf=None,
              **hyper) -> None:
    if skipped(found_inf):
        return
    reference.adam_step(params, unscaled(grads, grad_scale), exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                        _new_steps(steps), **hyper)


def adamomentum_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *, grad_scale=None,
                     found_inf=None, **hyper) -> None:
    if skipped(found_inf):
        return
    reference.adamomentum_step(params, unscaled(grads, grad_scale), exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                               _new_steps(steps), **hyper)


def dualadam_step(params, grads, exp_avgs, exp_avg_sqs, *, global_step, grad_scale=None, found_inf=None,
                  **hyper) -> None:
    if skipped(found_inf):
        return
    reference.dualadam_step(params, unscaled(grads, grad_scale), exp_avgs, exp_avg_sqs,
                            global_step=int(global_step.item()) + 1, **hyper)


# v_sums (Adai's carried sums of exp_avg_sq, backends.py) are not kept here: pass 1 reads v
# itself, and Adai drops the sums after this backend's update.


def adai_second_moment(params, grads, exp_avg_sqs, steps, *, grad_scale=None, found_inf=None, v_sums=None,
                       **hyper) -> torch.Tensor:
    """The reference's pass 1 on copies of v: like every backend's pass 1 it writes nothing
    (adai_update runs the v update), so that adai_clip_sums can stand in for it. The copies
    cost this fallback a read and a write of v; the values are the reference's bit for bit."""
    return reference.adai_second_moment(params, unscaled(grads, grad_scale), [v.clone() for v in exp_avg_sqs],
                                        _new_steps(steps), **hyper)


def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, grad_scale=None, v_sums=None, **hyper) -> torch.Tensor:
    return reference.adai_clip_sums(params, unscaled(grads, grad_scale), exp_avg_sqs, _new_steps(steps), **hyper)


def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, grad_scale=None, found_inf=None,
                v_sums=None, lr, beta0, eps, **hyper) -> None:
    if skipped(found_inf):
        return
    grads = unscaled(grads, grad_scale)
    new_steps = _new_steps(steps)
    # the v update of the reference's pass 1 (whose sum the optimizer already has), then pass 2
    reference.adai_second_moment(params, grads, exp_avg_sqs, new_steps, beta2=hyper["beta2"],
                                 weight_decay=hyper["weight_decay"], decoupled=hyper["decoupled"])
    reference.adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, new_steps, lr=lr, beta0=beta0, eps=eps,
                          **hyper)
