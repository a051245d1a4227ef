"""AdaMomentum (Wang et al., "Rethinking the Momentum Estimation in Adaptive Methods";
published later as AdaM3): the second moment tracks the squared MOMENTUM, not the gradient."""
from typing_extensions import Unpack

from . import _validation as check
from ._options import FusedOptions
from .base import FusedOptimizer


class AdaMomentum(FusedOptimizer):
    """State: step, exp_avg, exp_avg_sq (the authors' exp_avg_var), + max_exp_avg_sq with
    amsgrad. eps is added into exp_avg_sq every step, as in the authors' code."""

    operation = "adamomentum_step"
    state_initial_values = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    state_aliases = {"exp_avg_var": "exp_avg_sq", "max_exp_avg_var": "max_exp_avg_sq"}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, decoupled=True,
                 amsgrad=False, rectify=False, **options: Unpack[FusedOptions]):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                        amsgrad=amsgrad, rectify=rectify)
        self.hyper(defaults, None)
        super().__init__(params, defaults, **options)

    def hyper(self, group, index):
        # betas[1] > 0: rectify's rho_inf = 2 / (1 - beta2) - 1 and the bias correction need it
        return dict(
            **check.moment_hyperparameters(group, index, beta2_low_open=True),
            decoupled=check.flag("decoupled", group["decoupled"], index),
            amsgrad=check.flag("amsgrad", group["amsgrad"], index),
            rectify=check.flag("rectify", group["rectify"], index),
        )
