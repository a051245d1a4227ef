"""Per-tensor optimizer loops with the structure of the authors' published code.

They are the per-tensor baselines of the benchmarks (what a user switching from the authors'
optimizers runs today) and an independent check of the class layer in the tests: written from
spec/algorithms.md, not from fused_optim.reference, one python loop over the params with a few
torch ops per tensor, and state keys and an int step as the authors' code has them
(state_dict loads into the fused classes through their aliases).

Where the spec marks a deviation of ours (OURS), these loops keep the authors' behaviour:
- Adai gives NaN when the mean of vhat is 0 (e.g. every gradient exactly zero at step 1),
  and a step where no param has a grad divides by zero (ZeroDivisionError);
- DualAdam's global step is an attribute, not saved in state_dict.
The one exception: coupled L2 is computed out of place, p.grad is not modified (the authors
mutate it; the fused classes must not, and neither may a baseline that shares their params).
States take the param's dtype, as in the authors' code: use fp32 or fp64 params.
"""
import math

import torch
from torch.optim import Optimizer


def _step_closure(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class AuthorsAdai(Optimizer):
    """Adai, two python loops: pass 1 updates exp_avg_sq and sums vhat, pass 2 the rest."""

    def __init__(self, params, lr, betas=(0.1, 0.99), eps=1e-3, weight_decay=0.0, decoupled=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled))

    @staticmethod
    def _grad(p, group):
        # the authors add the L2 term into p.grad once; out of place it is formed in each pass
        # (p does not change in between: only decoupled decay touches p before the update)
        if group["weight_decay"] != 0 and not group["decoupled"]:
            return p.grad.add(p, alpha=group["weight_decay"])
        return p.grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = _step_closure(closure)
        exp_avg_sq_hat_sum = 0.0
        param_size = 0
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["beta1_prod"] = torch.ones_like(p)
                state["step"] += 1
                grad = self._grad(p, group)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg_sq_hat_sum += state["exp_avg_sq"].sum() / (1 - beta2 ** state["step"])
                param_size += p.numel()
        exp_avg_sq_hat_mean = exp_avg_sq_hat_sum / param_size
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta0, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                grad = self._grad(p, group)
                if wd != 0 and group["decoupled"]:
                    p.mul_(1 - lr * wd)
                exp_avg_sq_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                beta1 = (1.0 - exp_avg_sq_hat / exp_avg_sq_hat_mean * beta0).clamp(0.0, 1 - group["eps"])
                state["beta1_prod"].mul_(beta1)
                state["exp_avg"].mul_(beta1).addcmul_(1 - beta1, grad)
                p.add_(state["exp_avg"] / (1 - state["beta1_prod"]), alpha=-lr)
        return loss


class AuthorsAdaiW(AuthorsAdai):
    """AdaiW: AuthorsAdai with decoupled weight decay."""

    def __init__(self, params, lr, betas=(0.1, 0.99), eps=1e-3, weight_decay=0.0, decoupled=True):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled)


class AuthorsAdaMomentum(Optimizer):
    """AdaMomentum (AdaM3) without amsgrad and rectify; the second moment is exp_avg_var."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, decoupled=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _step_closure(closure)
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_var"] = torch.zeros_like(p)
                state["step"] += 1
                if group["decoupled"]:
                    p.mul_(1 - lr * wd)
                elif wd != 0:
                    grad = grad.add(p, alpha=wd)
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                exp_avg, exp_avg_var = state["exp_avg"], state["exp_avg_var"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_var.mul_(beta2).addcmul_(exp_avg, exp_avg, value=1 - beta2).add_(eps)
                denom = exp_avg_var.sqrt() / math.sqrt(bias_correction2)
                p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        return loss


class AuthorsDualAdam(Optimizer):
    """DualAdam: one step counter for the optimizer, states m and v."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, switch_rate=0.01, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, switch_rate=switch_rate, weight_decay=weight_decay))
        self.global_step = 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = _step_closure(closure)
        self.global_step += 1
        t = self.global_step
        for group in self.param_groups:
            lr, wd, eps, xi = group["lr"], group["weight_decay"], group["eps"], group["switch_rate"]
            beta1, beta2 = group["betas"]
            alpha = max(0.0, 1.0 - t * xi)  # python floats: the fp64 predicate the spec asks for
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                if wd != 0:
                    p.mul_(1 - lr * wd)
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                mhat = m / (1 - beta1**t)
                vhat = v / (1 - beta2**t)
                d = vhat.sqrt() + eps
                if alpha >= xi:
                    update = alpha * mhat * d + (1 - alpha) * mhat / d
                else:
                    update = mhat / d
                p.add_(update, alpha=-lr)
        return loss


class AuthorsInvAdam(AuthorsDualAdam):
    """InvAdam: AuthorsDualAdam with switch_rate 0 (alpha == 1 forever)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas, eps, 0.0, weight_decay)
