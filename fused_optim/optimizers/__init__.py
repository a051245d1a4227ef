"""The optimizer classes: thin torch.optim.Optimizer subclasses over the backends."""
from .adai import Adai, AdaiW
from .adam import Adam, AdamW
from .adamomentum import AdaMomentum
from .base import FusedOptimizer
from .dualadam import DualAdam, InvAdam
from .lion import Lion

__all__ = ["Adai", "AdaiW", "AdaMomentum", "Adam", "AdamW", "DualAdam", "FusedOptimizer", "InvAdam", "Lion"]
