"""Adam and AdamW with torch.optim's semantics, on the fused backends."""
from typing_extensions import Unpack

from . import _validation as check
from ._options import FusedOptions
from .base import FusedOptimizer


class Adam(FusedOptimizer):
    """torch.optim.Adam (L2 weight decay; decoupled_weight_decay=True makes it AdamW, as in
    torch). State: step, exp_avg, exp_avg_sq (+ max_exp_avg_sq with amsgrad), the keys
    torch.optim uses, so state dicts move between this class and torch.optim.Adam in both
    directions.

    torch.optim's implementation switches are accepted, so configs and libraries that pass
    them work unchanged: `foreach` and `fused` (any value; every step here is one fused pass
    per group whatever they say; `fused=True` also makes GradScaler hand the step its scale,
    as it does torch's fused Adam) are kept in the param groups as torch keeps them.
    `differentiable=True` is refused: the kernels update params in place outside autograd."""

    decoupled = False
    operation = "adam_step"
    state_initial_values = {"exp_avg": 0.0, "exp_avg_sq": 0.0}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 *, foreach=None, maximize=False, differentiable=False, fused=None,
                 decoupled_weight_decay=None, **options: Unpack[FusedOptions]):
        if differentiable:
            raise ValueError(f"{type(self).__name__}(differentiable=True) is not supported: the fused kernels write "
                             "params and states in place, outside autograd, so no gradient can flow through a "
                             "step. Use torch.optim for differentiable optimization")
        for name, value in (("foreach", foreach), ("fused", fused)):
            if value is not None:
                check.flag(name, value)
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self.decoupled
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=foreach, fused=fused, differentiable=False,
                        decoupled_weight_decay=decoupled_weight_decay)
        self.hyper(defaults, None)
        super().__init__(params, defaults, **options)

    def hyper(self, group, index):
        if group.get("differentiable"):
            raise ValueError(f"differentiable=True is not supported (param group {index})")
        return dict(
            **check.moment_hyperparameters(group, index),
            amsgrad=check.flag("amsgrad", group["amsgrad"], index),
            maximize=check.flag("maximize", group["maximize"], index),
            # a group without the key (a state dict of an older torch) keeps the class's rule
            decoupled=check.flag("decoupled_weight_decay", group.get("decoupled_weight_decay", self.decoupled),
                                 index),
        )


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay, p *= 1 - lr wd, default 1e-2."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 *, foreach=None, maximize=False, differentiable=False, fused=None, **options: Unpack[FusedOptions]):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         differentiable=differentiable, fused=fused, decoupled_weight_decay=True, **options)
