"""Adai (Xie et al., "Adaptive Inertia: Disentangling the Effects of Adaptive Learning Rate
and Momentum"): per-element inertia beta1 = clamp(1 - beta0 vhat / mean(vhat), 0, 1 - eps),
where the mean runs over every element of every param with a grad, in all groups."""
from . import _validation as check
from ._sharding import global_mean
from .base import FusedOptimizer


class Adai(FusedOptimizer):
    """State: step, exp_avg, exp_avg_sq, beta1_prod (starts at ones), as in the authors' code.
    lr is SGD-scale (0.1-1). eps bounds the inertia (beta1 <= 1 - eps); it is not a denominator
    term. decoupled=False: L2 (g_eff = g + wd p, p.grad itself is not modified);
    decoupled=True (AdaiW): p *= 1 - lr wd before the update."""

    state_initial_values = {"exp_avg": 0.0, "exp_avg_sq": 0.0, "beta1_prod": 1.0}
    # beta1_prod stays fp32 with state_dtype=bf16: it starts at 1 and is a product of factors
    # up to 1 - eps = 0.999, but bf16 has no value in (1 - 2^-9, 1): 0.999 rounds to 1, then
    # 1 - beta1_prod = 0 and the update divides by zero (tests/test_state_dtype.py shows it)
    math_dtype_states = ("beta1_prod",)

    def __init__(self, params, lr, betas=(0.1, 0.99), eps=1e-3, weight_decay=0.0, decoupled=False,
                 *, backend="auto", state_dtype=None, capturable=False,
                 max_grad_norm=None, norm_type=2.0, error_if_nonfinite=False,
                 master_weights=False, param_remainders=False, stochastic_rounding=False, seed=0):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        self.hyper(defaults, None)
        super().__init__(params, defaults, backend, state_dtype, capturable, max_grad_norm, norm_type,
                         error_if_nonfinite,
                         master_weights=master_weights, param_remainders=param_remainders,
                         stochastic_rounding=stochastic_rounding, seed=seed)

    def hyper(self, group, index):
        beta0, beta2 = check.betas_pair(group["betas"], index)
        return dict(
            lr=check.non_negative("lr", group["lr"], index),
            beta0=check.in_range("betas[0]", beta0, 0.0, 1.0, group_index=index),
            beta2=check.in_range("betas[1]", beta2, 0.0, 1.0, high_open=True, group_index=index),
            # eps > 0 keeps 1 - beta1_prod > 0: with eps = 0 a zero-grad run divides 0 by 0
            eps=check.in_range("eps", group["eps"], 0.0, 1.0, low_open=True, group_index=index),
            weight_decay=check.non_negative("weight_decay", group["weight_decay"], index),
            decoupled=check.flag("decoupled", group["decoupled"], index),
        )

    def _update(self, batches):
        if not batches:
            return
        work = []
        parts = []
        scaling = self.scaling()
        # pass 1 over every batch of every group; sums combined in a fixed order (deterministic)
        for b in batches:
            states = self._states(b)
            steps = self._column(states, "step")
            h = b.hyper
            part = b.impl.adai_second_moment(
                b.params, b.grads, self._column(states, "exp_avg_sq"), steps,
                beta2=h["beta2"], weight_decay=h["weight_decay"], decoupled=h["decoupled"], **scaling,
            )
            parts.append((b.shard_group, part, sum(p.numel() for p in b.params)))
            work.append((b, states, steps))
        # over every element of every param with a grad, on all ranks when params are sharded
        vbar = global_mean(parts)
        for b, states, steps in work:
            b.impl.adai_update(
                b.params, b.grads, self._column(states, "exp_avg"), self._column(states, "exp_avg_sq"),
                self._column(states, "beta1_prod"), steps, vbar=vbar, **b.hyper, **scaling,
            )
            self._commit_steps(b, states)


class AdaiW(Adai):
    """Adai with decoupled weight decay (decoupled=True by default)."""

    def __init__(self, params, lr, betas=(0.1, 0.99), eps=1e-3, weight_decay=0.0, decoupled=True,
                 *, backend="auto", state_dtype=None, capturable=False,
                 max_grad_norm=None, norm_type=2.0, error_if_nonfinite=False,
                 master_weights=False, param_remainders=False, stochastic_rounding=False, seed=0):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled, backend=backend,
                         state_dtype=state_dtype, capturable=capturable,
                         max_grad_norm=max_grad_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite,
                         master_weights=master_weights, param_remainders=param_remainders,
                         stochastic_rounding=stochastic_rounding, seed=seed)
