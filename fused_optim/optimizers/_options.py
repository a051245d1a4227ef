"""The constructor options every optimizer takes besides its hyperparameters, declared once.

Each class's __init__ spells its own hyperparameters and takes these as `**options`; its
signature (inspect.signature, help(), IDEs through Unpack) still lists every one of them, and
an unknown keyword raises TypeError as a written-out signature would.
"""
import inspect
from typing import Any, Callable, Dict, Optional

import torch
from typing_extensions import Annotated, TypedDict, get_type_hints


class FusedOptions(TypedDict, total=False):
    """Keyword options of every fused_optim optimizer (the Annotated value is the default)."""

    # "auto", "torch", "cpu", "cuda" or "triton" (fused_optim.backends)
    backend: Annotated[str, "auto"]
    # dtype of the tensor states of fp32/bf16/fp16 params: None (the math dtype) or torch.bfloat16
    state_dtype: Annotated[Optional[torch.dtype], None]
    # step counters on the params' device and no host read in step(): CUDA-graph capture
    capturable: Annotated[bool, False]
    # clip_grad_norm_ fused into the step (optimizers/_clipping.py)
    max_grad_norm: Annotated[Optional[float], None]
    norm_type: Annotated[float, 2.0]
    error_if_nonfinite: Annotated[bool, False]
    # how bf16/fp16 params keep small updates (optimizers/_mixed_precision.py)
    master_weights: Annotated[bool, False]
    param_remainders: Annotated[bool, False]
    stochastic_rounding: Annotated[bool, False]
    seed: Annotated[int, 0]


DEFAULTS: Dict[str, Any] = {name: hint.__metadata__[0]
                            for name, hint in get_type_hints(FusedOptions, include_extras=True).items()}


def resolve(owner: str, given: Dict[str, Any]) -> Dict[str, Any]:
    """Every option, the given ones over the defaults; an unknown name is a TypeError."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    return {**DEFAULTS, **given}


def spell_out_signature(init: Callable) -> None:
    """Gives an __init__ that ends in **options the signature it would have with the options
    written out (keyword-only, with their defaults), unless it names some itself."""
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        return
    named = {p.name for p in parameters}
    hints = get_type_hints(FusedOptions)
    options = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[name])
               for name, default in DEFAULTS.items() if name not in named]
    init.__signature__ = signature.replace(parameters=parameters[:-1] + options)
