"""Hyperparameter checks shared by the optimizer classes. Each raises ValueError naming the
hyperparameter, its value and the group, before anything is modified."""
import math
from numbers import Real

import torch


def _where(group_index) -> str:
    return "" if group_index is None else f" (param group {group_index})"


def as_float(name: str, value, group_index=None) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a 1-element tensor{_where(group_index)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}{_where(group_index)}")
    if not isinstance(value, float):
        value = float(value)
    # comparisons, not math.isfinite: torch.compile traces a float hyperparameter as a
    # symbolic input (an lr schedule then recompiles nothing), and comparisons are traceable;
    # NaN fails both
    if not -math.inf < value < math.inf:
        raise ValueError(f"{name} must be finite, got {value}{_where(group_index)}")
    return value


def in_range(name: str, value, low: float, high: float, *, low_open=False, high_open=False, group_index=None) -> float:
    v = as_float(name, value, group_index)
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if below or above:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {v}{_where(group_index)}")
    return v


def non_negative(name: str, value, group_index=None) -> float:
    return in_range(name, value, 0.0, math.inf, high_open=True, group_index=group_index)


def betas_pair(value, group_index=None):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair of numbers, got {value!r}{_where(group_index)}")
    return value


def flag(name: str, value, group_index=None) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}{_where(group_index)}")
    return value


def moment_hyperparameters(group, index, *, beta2_low_open=False) -> dict:
    """lr, betas, eps and weight_decay of the Adam family (Adam/AdamW, AdaMomentum, DualAdam)."""
    beta1, beta2 = betas_pair(group["betas"], index)
    return dict(
        lr=non_negative("lr", group["lr"], index),
        beta1=in_range("betas[0]", beta1, 0.0, 1.0, high_open=True, group_index=index),
        beta2=in_range("betas[1]", beta2, 0.0, 1.0, low_open=beta2_low_open, high_open=True, group_index=index),
        eps=non_negative("eps", group["eps"], index),
        weight_decay=non_negative("weight_decay", group["weight_decay"], index),
    )


def step_count(value, what: str) -> float:
    """A step count from a state dict: a whole number >= 0 (int, float or 1-element tensor)."""
    if torch.is_tensor(value):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{what} must be a number or a 1-element tensor, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    value = float(value)
    if not (0 <= value < math.inf) or value != int(value):
        raise ValueError(f"{what} must be a whole number >= 0, got {value}")
    return value
