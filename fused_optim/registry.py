"""One table of the optimizers: tests and benchmarks iterate over it, so a new optimizer
gets the whole parity matrix and its benchmark rows by adding one entry."""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from .optimizers import Adai, AdaiW, AdaMomentum, Adam, AdamW, DualAdam, InvAdam, Lion


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    cls: type
    # Hyperparameter cases (constructor kwargs) the tests cover; the first is the default use.
    cases: Dict[str, Dict[str, Any]]
    # Per-param tensor states with the default flags (amsgrad adds max_exp_avg_sq).
    state_names: Tuple[str, ...]
    # Bytes per element one step must move with fp32 params and states, default flags (no
    # amsgrad, no L2): the reads and writes of params, grads and states.
    bytes_per_element: int
    # Bytes per element the CPU backend moves (csrc/cpu/<opt>.cpp). Adai: a 4 B grad-only
    # reduction pass plus a 36 B update pass, the minimum for a global mean over all grads.
    bytes_moved_cpu: int
    # The benchmark's group of this optimizer (bench/): its hyperparameters, the same for every
    # implementation measured; the torch.optim class measured fused/foreach in it; the
    # authors' per-tensor loop (fused_optim.reference.authors, by class name); pytorch_optimizer's
    # class name and the kwargs that give the same hyperparameters.
    bench_kwargs: Dict[str, Any] = field(default_factory=dict)
    torch_peer: Optional[type] = None
    authors: Optional[str] = None
    pytorch_optimizer: Optional[Tuple[str, Dict[str, Any]]] = None


ADAM_STATES = ("exp_avg", "exp_avg_sq")

OPTIMIZERS: Dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec(
            "Adam", Adam,
            {"default": {}, "l2": {"weight_decay": 0.1}, "amsgrad": {"amsgrad": True, "weight_decay": 0.05},
             "maximize": {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6}},
            ADAM_STATES, 28, 28, torch_peer=torch.optim.Adam,
        ),
        OptimizerSpec(
            "AdamW", AdamW,
            {"default": {}, "amsgrad_maximize": {"amsgrad": True, "maximize": True, "weight_decay": 0.1}},
            ADAM_STATES, 28, 28, torch_peer=torch.optim.AdamW,
        ),
        OptimizerSpec(
            "Adai", Adai,
            {"default": {"lr": 0.5}, "l2": {"lr": 0.5, "weight_decay": 0.05},
             "decoupled": {"lr": 0.5, "weight_decay": 0.05, "decoupled": True},
             "betas_eps": {"lr": 0.1, "betas": (0.3, 0.9), "eps": 0.05}},
            # the bench: lr 0.1, the authors' CIFAR setting
            ("exp_avg", "exp_avg_sq", "beta1_prod"), 40, 40, dict(lr=0.1), authors="AuthorsAdai",
            pytorch_optimizer=("Adai", dict(lr=0.1)),
        ),
        OptimizerSpec(
            "AdaiW", AdaiW, {"default": {"lr": 0.5, "weight_decay": 0.05}},
            ("exp_avg", "exp_avg_sq", "beta1_prod"), 40, 40, dict(lr=0.1, weight_decay=5e-4), authors="AuthorsAdaiW",
            pytorch_optimizer=("Adai", dict(lr=0.1, weight_decay=5e-4, weight_decouple=True)),
        ),
        OptimizerSpec(
            "AdaMomentum", AdaMomentum,
            {"default": {}, "l2": {"decoupled": False, "weight_decay": 0.05},
             "decoupled_wd": {"weight_decay": 0.05}, "amsgrad": {"amsgrad": True},
             # betas[1] = 0.9 makes rho_t cross 5 at step 6: both rectify regimes are covered
             "rectify": {"rectify": True, "betas": (0.9, 0.9), "eps": 1e-8},
             "rectify_amsgrad": {"rectify": True, "amsgrad": True, "betas": (0.8, 0.9), "eps": 1e-8}},
            ADAM_STATES, 28, 28, authors="AuthorsAdaMomentum",
        ),
        OptimizerSpec(
            "DualAdam", DualAdam,
            # switch_rate 0.3: blending at steps 1-2, pure Adam from step 3
            {"default": {}, "fast_switch": {"switch_rate": 0.3}, "wd": {"switch_rate": 0.2, "weight_decay": 0.05}},
            # the bench: the default switch_rate 0.01 keeps the blend (the more expensive path)
            # active for every measured step
            ADAM_STATES, 28, 28, authors="AuthorsDualAdam", pytorch_optimizer=("DualAdam", {}),
        ),
        OptimizerSpec(
            "InvAdam", InvAdam, {"default": {}, "wd": {"weight_decay": 0.05, "eps": 1e-3}},
            ADAM_STATES, 28, 28, authors="AuthorsInvAdam",
        ),
        OptimizerSpec(
            "Lion", Lion,
            {"default": {}, "wd": {"weight_decay": 0.1}, "betas": {"betas": (0.8, 0.95), "lr": 3e-4}},
            ("exp_avg",), 20, 20, pytorch_optimizer=("Lion", {}),
        ),
    ]
}
