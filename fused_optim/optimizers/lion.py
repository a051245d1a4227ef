"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023): the update is the
sign of an interpolation of momentum and gradient, so every element moves by exactly lr; one
state instead of Adam's two."""
from typing_extensions import Unpack

from . import _validation as check
from ._options import FusedOptions
from .base import FusedOptimizer


class Lion(FusedOptimizer):
    """State: step, exp_avg. Decoupled weight decay (p *= 1 - lr wd). The paper suggests an lr
    3-10x smaller than AdamW's and a weight decay 3-10x larger, for the same lr * wd."""

    operation = "lion_step"
    state_initial_values = {"exp_avg": 0.0}

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, **options: Unpack[FusedOptions]):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay)
        self.hyper(defaults, None)
        super().__init__(params, defaults, **options)

    def hyper(self, group, index):
        beta1, beta2 = check.betas_pair(group["betas"], index)
        return dict(
            lr=check.non_negative("lr", group["lr"], index),
            # < 1 as for Adam: beta1 = 1 ignores the grads, beta2 = 1 never updates m
            beta1=check.in_range("betas[0]", beta1, 0.0, 1.0, high_open=True, group_index=index),
            beta2=check.in_range("betas[1]", beta2, 0.0, 1.0, high_open=True, group_index=index),
            weight_decay=check.non_negative("weight_decay", group["weight_decay"], index),
        )
