"""InvAdam and DualAdam: InvAdam multiplies the momentum by the adaptive term
instead of dividing; DualAdam blends from InvAdam to Adam as alpha = max(0, 1 - t xi) decays."""
import warnings

import torch
from typing_extensions import Unpack

from . import _validation as check
from ._options import FusedOptions
from .base import FusedOptimizer


class DualAdam(FusedOptimizer):
    """State: exp_avg, exp_avg_sq per param, and ONE step counter for the whole optimizer
    (authors' code), saved in state_dict as "global_step" (OURS: the authors do not save it).
    The counter advances on every step() call, even when no param has a grad."""

    operation = "dualadam_step"
    state_initial_values = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    state_aliases = {"m": "exp_avg", "v": "exp_avg_sq"}
    per_param_step = False
    # one pass per batch with the global step, which advances once per step (_update): what
    # the step lane (_step_lane.py) repeats
    one_pass_with_global_step = True
    _pickled_attributes = FusedOptimizer._pickled_attributes + ("_global_step",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, switch_rate=0.01, weight_decay=0.0,
                 **options: Unpack[FusedOptions]):
        defaults = dict(lr=lr, betas=betas, eps=eps, switch_rate=switch_rate, weight_decay=weight_decay)
        self.hyper(defaults, None)
        # a tensor, not an int: torch.compile would otherwise guard on its value and recompile
        # the step every call; float64 holds every count exactly and feeds the fp64 blend rule
        self._global_step = torch.zeros((), dtype=torch.float64)
        super().__init__(params, defaults, **options)

    @property
    def global_step(self) -> int:
        """Steps taken (the authors' optimizer-level counter)."""
        return int(self._global_step.item())

    @global_step.setter
    def global_step(self, value: int) -> None:
        self._global_step.fill_(value)

    def hyper(self, group, index):
        return dict(
            **check.moment_hyperparameters(group, index),
            switch_rate=check.in_range("switch_rate", group["switch_rate"], 0.0, 1.0, group_index=index),
        )

    def _update(self, batches):
        if batches and batches[0].group.get("capturable") and self._global_step.device != batches[0].tensors[0].device:
            # capturable: the counter lives with the params (kernels read it there, no sync)
            self._global_step = self._global_step.to(batches[0].tensors[0].device)
        for b in batches:
            self._run(b, self._states(b), global_step=self._global_step)
            self._batch_done(b)
        # the global step advances on every call (also without grads), once all went well
        self._advance([self._global_step])

    def _partial_step_done(self):
        self._advance([self._global_step])

    def state_dict(self):
        sd = super().state_dict()
        sd["global_step"] = self.global_step
        return sd

    @staticmethod
    def _saved_global_step(state_dict):
        """The optimizer-level count: ours ("global_step"), else where other code keeps one
        counter for all params (a top-level "step", or "step" in the param groups, which must
        then agree), else None."""
        for key in ("global_step", "step"):
            if state_dict.get(key) is not None:
                return state_dict[key]
        group_steps = {check.step_count(g["step"], "a param group's step")
                       for g in state_dict.get("param_groups", []) if g.get("step") is not None}
        if len(group_steps) > 1:
            raise ValueError(f"the param groups of the state dict carry different steps {sorted(group_steps)}")
        return group_steps.pop() if group_steps else None

    def _load_state_dict(self, state_dict):
        global_step = self._saved_global_step(state_dict)
        if global_step is None:
            if state_dict.get("state"):
                warnings.warn(
                    "DualAdam.load_state_dict: no 'global_step' in the state dict (the authors' code does not "
                    "save it); the step count restarts at 0", RuntimeWarning, stacklevel=3,
                )
            global_step = 0
        global_step = int(check.step_count(global_step, "the state dict's global_step"))
        imported = {k: v for k, v in state_dict.items() if k not in ("global_step", "step")}
        imported["param_groups"] = [{k: v for k, v in g.items() if k != "step"}
                                    for g in state_dict.get("param_groups", [])]
        super()._load_state_dict(imported)
        self.global_step = global_step


class InvAdam(DualAdam):
    """InvAdam = DualAdam with switch_rate 0: p -= lr mhat (sqrt(vhat) + eps), forever."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 **options: Unpack[FusedOptions]):
        super().__init__(params, lr, betas, eps, 0.0, weight_decay, **options)
