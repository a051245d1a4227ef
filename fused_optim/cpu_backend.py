"""The "cpu" backend: the reference's step functions, computed by the native module.

Each function follows the backend contract (backends.py) and hands the whole tensor list to
ONE native call (per pass). The native side iterates over raw memory,
so every tensor of one element index (param, grad, states) must share a dense layout; where
one does not (a strided view, say), that index goes through contiguous staging copies that
are written back after the call.
"""
import math
from typing import List, Optional

import torch

from . import _cpu
from ._grad_scaling import skipped
from ._staging import Staged

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def _dtype_code(params: List[torch.Tensor]) -> int:
    return _DTYPE_CODES[params[0].dtype]


def _threads() -> int:
    return torch.get_num_threads()


def _new_steps(steps: List[torch.Tensor]) -> List[float]:
    return [s.item() + 1.0 for s in steps]


def _divisor(grad_scale: Optional[torch.Tensor]) -> float:
    """What the kernels divide every grad by, in the math dtype: GradScaler's scale, with the
    clip coefficient folded in (FusedOptimizer._scaling_for); 1 without either. Dividing in
    the loop saves the divided copy of every grad that the torch backend makes (read + write
    per element), which is what makes clipping inside the step cheaper than clip_grad_norm_
    here too. A CPU scalar: reading it costs no sync."""
    return 1.0 if grad_scale is None else float(grad_scale)


def _staged(roles, param_extras: Optional[List[torch.Tensor]], written: bool) -> Staged:
    """The call's lists: the roles (param, grad, states...; every role but the grads written
    when the call writes), then the masters/remainders of the param modes that keep them.
    The params of those modes are contiguous (MasterStep asks for it), so nothing is staged
    that would come back in another element order."""
    roles = list(roles) + ([param_extras] if param_extras is not None else [])
    return Staged(roles, [written and k != 1 for k in range(len(roles))])


def _storage(param_mode: int, seed: int, tensor_indices: Optional[List[int]]) -> dict:
    """How the params are kept (_mixed_precision.MasterStep: param_mode 1 masters, 2
    remainders, 3 stochastic rounding keyed by the seed and each param's index among all the
    optimizer's params), as the native calls take it."""
    if not param_mode:
        return {}
    return {"param_mode": int(param_mode), "seed": int(seed) & 0xFFFFFFFF,
            "tensor_indices": [int(i) & 0xFFFFFFFF for i in (tensor_indices or [])]}


def advance_steps(steps: List[torch.Tensor]) -> None:
    """Adds 1 to each 0-dim float32 CPU step tensor (FusedOptimizer._states makes them so) in
    one native call: torch's per-tensor ops (torch._foreach_add_ included) cost ~2 us per CPU
    scalar, 0.5 ms for 300 params."""
    _cpu.advance_counters([s.data_ptr() for s in steps])


def adam_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: Optional[List[torch.Tensor]], steps, *,
    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize, grad_scale=None, found_inf=None,
    param_mode=0, param_extras=None, seed=0, tensor_indices=None,
) -> None:
    if skipped(found_inf):
        return
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    staged = _staged(roles, param_extras, written=True)
    _cpu.adam_step(
        staged.addresses, staged.numels, _new_steps(steps), _dtype_code(params), lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize,
        num_threads=_threads(), grad_divisor=_divisor(grad_scale), **_storage(param_mode, seed, tensor_indices),
    )
    staged.finish()


def adamomentum_step(
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs: Optional[List[torch.Tensor]], steps, *,
    lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, rectify, grad_scale=None, found_inf=None,
    param_mode=0, param_extras=None, seed=0, tensor_indices=None,
) -> None:
    if skipped(found_inf):
        return
    roles = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    staged = _staged(roles, param_extras, written=True)
    _cpu.adamomentum_step(
        staged.addresses, staged.numels, _new_steps(steps), _dtype_code(params), lr=lr, beta1=beta1, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad, rectify=rectify,
        num_threads=_threads(), grad_divisor=_divisor(grad_scale), **_storage(param_mode, seed, tensor_indices),
    )
    staged.finish()


def dualadam_step(
    params, grads, exp_avgs, exp_avg_sqs, *, global_step, lr, beta1, beta2, eps, weight_decay, switch_rate,
    grad_scale=None, found_inf=None, param_mode=0, param_extras=None, seed=0, tensor_indices=None,
) -> None:
    from .reference import dualadam_blend_weight

    if skipped(found_inf):
        return
    t = int(global_step.item()) + 1
    alpha, blend = dualadam_blend_weight(t, switch_rate)
    staged = _staged([params, grads, exp_avgs, exp_avg_sqs], param_extras, written=True)
    _cpu.dualadam_step(
        staged.addresses, staged.numels, _dtype_code(params), lr=lr, beta1=beta1, beta2=beta2, eps=eps,
        weight_decay=weight_decay, global_step=float(t), alpha=alpha, blend=blend,
        num_threads=_threads(), grad_divisor=_divisor(grad_scale), **_storage(param_mode, seed, tensor_indices),
    )
    staged.finish()


# Adai: the native passes split the step differently from the reference (csrc/cpu/adai.cpp):
# pass 1 reads only the grads and derives sum(v_new) from each tensor's sum(v) as our previous
# update pass left it; pass 2 updates v with everything else and sums the new v. The pair has
# the reference pair's effect; pass 1 alone does not write v. The sums are the optimizer's
# state (v_sums, backends.py): NaN where not known, then read from exp_avg_sq here.


def _v_sum_values(exp_avg_sqs: List[torch.Tensor], v_sums: Optional[List[torch.Tensor]]) -> List[float]:
    """sum(exp_avg_sq) of each tensor: its carried sum, or where that is not known (NaN, or
    no v_sums at all) a read of exp_avg_sq."""
    values = [math.nan] * len(exp_avg_sqs) if v_sums is None else [s.item() for s in v_sums]
    missing = [i for i, total in enumerate(values) if math.isnan(total)]
    if missing:
        states = [exp_avg_sqs[i] for i in missing]
        staged = Staged([states], [False])
        computed = _cpu.tensor_sums(staged.addresses, staged.numels, _dtype_code(states), num_threads=_threads())
        for i, total in zip(missing, computed):
            values[i] = total
    return values


def adai_second_moment(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, grad_scale=None,
                       found_inf=None, v_sums=None, param_mode=0, param_extras=None, seed=0,
                       tensor_indices=None) -> torch.Tensor:
    # pass 1 writes nothing, so found_inf needs no check here (adai_update skips)
    staged = _staged([params, grads], param_extras, written=False)
    total = _cpu.adai_vhat_sum(
        staged.addresses, staged.numels, _new_steps(steps), _v_sum_values(exp_avg_sqs, v_sums), _dtype_code(params),
        beta2=beta2, weight_decay=weight_decay, decoupled=decoupled, num_threads=_threads(),
        grad_divisor=_divisor(grad_scale), **_storage(param_mode, seed, tensor_indices),
    )
    return torch.tensor(total, dtype=torch.float64)


def adai_clip_sums(params, grads, exp_avg_sqs, steps, *, beta2, weight_decay, decoupled, norm_type,
                   grad_scale=None, v_sums=None, param_mode=0, param_extras=None, seed=0,
                   tensor_indices=None) -> torch.Tensor:
    staged = _staged([params, grads], param_extras, written=False)
    sums = _cpu.adai_clip_sums(
        staged.addresses, staged.numels, _new_steps(steps), _v_sum_values(exp_avg_sqs, v_sums), _dtype_code(params),
        beta2=beta2, weight_decay=weight_decay, decoupled=decoupled, norm_type=norm_type, num_threads=_threads(),
        grad_divisor=_divisor(grad_scale), **_storage(param_mode, seed, tensor_indices),
    )
    return torch.tensor(sums, dtype=torch.float64)


def adai_update(
    params, grads, exp_avgs, exp_avg_sqs, beta1_prods, steps, *,
    lr, beta0, beta2, eps, weight_decay, decoupled, vbar, grad_scale=None, found_inf=None, v_sums=None,
    param_mode=0, param_extras=None, seed=0, tensor_indices=None,
) -> None:
    """Pass 2. With v_sums (0-dim float64 CPU tensors, the optimizer checked them), each one
    holds sum(exp_avg_sq) afterwards: the native loop stores the sums of the new v there, and
    a step skipped by found_inf fills in those not known from the unchanged v."""
    if skipped(found_inf):
        if v_sums is not None:
            for total, value in zip(v_sums, _v_sum_values(exp_avg_sqs, v_sums)):
                total.fill_(value)
        return
    staged = _staged([params, grads, exp_avgs, exp_avg_sqs, beta1_prods], param_extras, written=True)
    _cpu.adai_update(
        staged.addresses, staged.numels, _new_steps(steps), _dtype_code(params), lr=lr, beta0=beta0, beta2=beta2,
        eps=eps, weight_decay=weight_decay, decoupled=decoupled, vbar=float(vbar), num_threads=_threads(),
        grad_divisor=_divisor(grad_scale), **_storage(param_mode, seed, tensor_indices),
        v_sum_addresses=[] if v_sums is None else [s.data_ptr() for s in v_sums],
    )
    staged.finish()
