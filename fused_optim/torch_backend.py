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


def adai_second_moment(params, grads, exp_avg_sqs, steps, *, grad_scale=None, found_inf=None,
                       **hyper) -> torch.Tensor:
    # the reference's pass 1 writes v, so a skipped step must stop here already
    if skipped(found_inf):
        return torch.zeros((), dtype=torch.float64, device=params[0].device)
    return reference.adai_second_moment(params, unscaled(grads, grad_scale), exp_avg_sqs, _new_steps(steps),
                                         **hyper)


def adai_update(params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *, grad_scale=None, found_inf=None,
                **hyper) -> None:
    if skipped(found_inf):
        return
    reference.adai_update(params, unscaled(grads, grad_scale), exp_avgs, exp_avg_sqs, beta1_prods,
                          _new_steps(steps), **hyper)
