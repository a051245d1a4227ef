"""The backend contract, declared once: every operation a backend implements, with its argument
list, what it writes, its fake (meta) result and its doc. From these declarations follow the
torch.library operators that torch.compile traces, the eager fast path the optimizers take, and
each backend's registration (`implements`): a backend module only writes its functions.

Conventions every operation shares (all tensors of one call on one device, the params of one
dtype; lists may be long and tensors zero-size or non-contiguous):
- The Tensor[] arguments are per-param lists, in the order the declaration gives. A list named
  after a state holds that state of every param ("exp_avgs": state "exp_avg"); an optional one
  (max_exp_avg_sqs without amsgrad) is passed empty. Tensor(x!) marks what a call writes.
- steps: each param's counter, a 0-dim float32 tensor holding the count BEFORE this step (the
  update uses t = step + 1); global_step: DualAdam's one counter, 0-dim float64, the same way.
  Backends only read them; the optimizer advances them once every call succeeded.
- grad_scale / found_inf: a GradScaler's scale (grads are divided by it) and its inf flag
  (nonzero: the call changes nothing).
- Keyword numbers and flags are the group's hyperparameters, as the optimizer's hyper() gives
  them; a hyperparameter is never a compile-time constant of a kernel.
- storage (eager calls only, not part of the schema): how bf16/fp16 params are kept
  (_param_storage.ParamStorage); None for plain params. Under torch.compile the optimizer
  takes the unfused path instead (optimizers/_mixed_precision.py).
- prepared (eager calls only, not part of the schema; backends with address lists): the
  call's address lists as a step plan prepared and checked them (_staging.Prepared, built
  from the very lists given), or None. A backend given them skips its own checks and staging
  of the lists: the plan made them with the checks passed and keeps them valid.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_NAMESPACE = "fused_optim"
_MOMENTS = "float lr, float beta1, float beta2, float eps, float weight_decay"
_SCALING = "Tensor? grad_scale=None, Tensor? found_inf=None"


def _returns_nothing(*_, **__) -> None:
    return None


@dataclass(frozen=True)
class Operation:
    """One operation of the contract. `signature` is its argument list in torch's schema
    language, the one spelling of it: names, order, types, defaults and what is written."""

    name: str
    signature: str
    doc: str
    fake: Callable = _returns_nothing
    # "module.function" of fused_optim.reference with this operation's effect (steps as the new
    # counts), which the torch backend runs as it is; None where its torch implementation is its own
    reference: Optional[str] = None
    lists: Tuple[str, ...] = field(init=False)  # the per-param Tensor[] arguments, in order
    mutated: Tuple[str, ...] = field(init=False)  # the arguments the call writes
    hyperparameters: Tuple[str, ...] = field(init=False)  # keyword numbers and flags, in order
    scalars: Tuple[str, ...] = field(init=False)  # keyword 0-dim tensors (vbar, grad_scale, ...)

    def __post_init__(self):
        schema = torch._C.parse_schema(f"{_NAMESPACE}::{self.name}{self.signature}")
        lists, mutated, hyper, scalars = [], [], [], []
        for argument in schema.arguments:
            kind = str(argument.type)
            if argument.alias_info is not None and argument.alias_info.is_write:
                mutated.append(argument.name)
            if not argument.kwarg_only:
                lists.append(argument.name)
            elif kind in ("float", "bool", "int"):
                hyper.append(argument.name)
            elif kind in ("Tensor", "Optional[Tensor]"):
                scalars.append(argument.name)
        object.__setattr__(self, "lists", tuple(lists))
        object.__setattr__(self, "mutated", tuple(mutated))
        object.__setattr__(self, "hyperparameters", tuple(hyper))
        object.__setattr__(self, "scalars", tuple(scalars))

    def reference_function(self) -> Optional[Callable]:
        """The reference function named by `reference`, or None."""
        if self.reference is None:
            return None
        import importlib

        module, function = self.reference.rsplit(".", 1)
        return getattr(importlib.import_module(f"{__package__}.reference.{module}"), function)

    def state_lists(self) -> Tuple[str, ...]:
        """The lists that hold a state of each param (all but params, grads and steps)."""
        return tuple(name for name in self.lists if name not in ("params", "grads", "steps"))


def state_key(list_name: str) -> str:
    """The state a per-param list holds: "exp_avgs" -> "exp_avg"."""
    return list_name[:-1]


def _fake_sum(params, *_, **__) -> torch.Tensor:
    return torch.empty((), dtype=torch.float64, device=params[0].device if params else "cpu")


def _fake_clip_sums(params, *_, **__) -> torch.Tensor:
    return torch.empty(4, dtype=torch.float64, device=params[0].device if params else "cpu")


OPERATIONS: Dict[str, Operation] = {}


def declare(name: str, signature: str, doc: str, **kwargs: Any) -> Operation:
    operation = Operation(name, signature, doc, **kwargs)
    OPERATIONS[name] = operation
    return operation


declare(
    "adam_step",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] max_exp_avg_sqs, Tensor[] steps, *, " + _MOMENTS + ", bool decoupled, bool amsgrad, "
    "bool maximize, " + _SCALING + ") -> ()",
    "One Adam (decoupled=False: L2) or AdamW step; max_exp_avg_sqs only with amsgrad.",
    reference="adam.adam_step",
)
declare(
    "adamomentum_step",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] max_exp_avg_sqs, Tensor[] steps, *, " + _MOMENTS + ", bool decoupled, bool amsgrad, "
    "bool rectify, " + _SCALING + ") -> ()",
    "One AdaMomentum step (the second moment of the momentum); max_exp_avg_sqs only with amsgrad.",
    reference="adamomentum.adamomentum_step",
)
declare(
    "dualadam_step",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, *, "
    "Tensor global_step, " + _MOMENTS + ", float switch_rate, " + _SCALING + ") -> ()",
    "One DualAdam / InvAdam step: the InvAdam term blended into Adam's by the global step.",
    reference="dualadam.dualadam_step",
)
declare(
    "lion_step",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor[] steps, *, float lr, float beta1, "
    "float beta2, float weight_decay, " + _SCALING + ") -> ()",
    "One Lion step: p <- p (1 - lr wd) - lr sign(beta1 m + (1 - beta1) g), then m <- beta2 m + (1 - beta2) g.",
    reference="lion.lion_step",
)
# Adai's pass 1 in either form writes nothing (adai_update updates v and the carried sums).
# v_sums: None, or Adai's carried sums (optimizers/adai.py), one 0-dim float64 CPU tensor per
# param holding sum(exp_avg_sq) as this backend's last update left it, NaN where not known.
# Only a backend that keeps them gets them (cpu: its pass 1 then reads g alone); its pass 1
# reads them (exp_avg_sq where NaN) and its adai_update leaves each holding sum(exp_avg_sq),
# a step skipped by found_inf too. The other backends take the argument and ignore it.
declare(
    "adai_second_moment",
    "(Tensor[] params, Tensor[] grads, Tensor[] exp_avg_sqs, Tensor[] steps, *, float beta2, float weight_decay, "
    "bool decoupled, " + _SCALING + ", Tensor[]? v_sums=None) -> Tensor",
    "Adai pass 1: the group's sum of the new vhat, a 0-dim float64 tensor on the params' device.",
    fake=_fake_sum,
)
declare(
    "adai_clip_sums",
    "(Tensor[] params, Tensor[] grads, Tensor[] exp_avg_sqs, Tensor[] steps, *, float beta2, float weight_decay, "
    "bool decoupled, float norm_type, Tensor? grad_scale=None, Tensor[]? v_sums=None) -> Tensor",
    "Adai pass 1 with max_grad_norm (reference: adai_clip_sums): a float64 tensor of 4, [norm part, c0, c1, "
    "c2]: the group's part of the grad norm and its sum of vhat as c0 + c1 c + c2 c^2 in the clip coefficient.",
    fake=_fake_clip_sums,
)
declare(
    "adai_update",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] beta1_prods, Tensor[] steps, *, float lr, float beta0, float beta2, float eps, "
    "float weight_decay, bool decoupled, Tensor vbar, " + _SCALING + ", Tensor(e!)[]? v_sums=None) -> ()",
    "Adai pass 2 given vbar (0-dim float64, the global mean of vhat): v, beta1_prod, m and p.",
)


# ---- registration -----------------------------------------------------------------------------

_IMPLEMENTATIONS: Dict[str, Dict[str, Callable]] = {}


def implements(backend: str, name: str) -> Callable[[Callable], Callable]:
    """Registers a backend's function for a declared operation. The function takes the
    declaration's arguments by name (the lists positionally, the rest as keywords) plus
    `storage` where the backend fuses param storage modes and `prepared` where it takes
    address lists (the fused backends: cpu, cuda, triton)."""
    if name not in OPERATIONS:
        raise KeyError(f"no operation {name!r} is declared in fused_optim.operations")

    def register(function: Callable) -> Callable:
        _IMPLEMENTATIONS.setdefault(backend, {})[name] = function
        return function

    return register


def implementations(backend: str) -> Dict[str, Callable]:
    return dict(_IMPLEMENTATIONS.get(backend, {}))


_library = None
_defined: Dict[Tuple[str, str], Any] = {}


def operator(backend: str, name: str):
    """torch.ops.fused_optim.<backend>_<name>, defined from the declaration on first use."""
    key = (backend, name)
    op = _defined.get(key)
    if op is None:
        global _library
        if _library is None:
            _library = torch.library.Library(_NAMESPACE, "FRAGMENT")
        declaration, function = OPERATIONS[name], _IMPLEMENTATIONS[backend][name]
        qualified = f"{backend}_{name}"
        _library.define(qualified + declaration.signature)
        _library.impl(qualified, function, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{_NAMESPACE}::{qualified}", declaration.fake, lib=_library)
        op = getattr(getattr(torch.ops, _NAMESPACE), qualified)
        _defined[key] = op
    return op


def _increment_versions_at_once() -> bool:
    # newer torch (2.6 on, checked) takes the whole list in one call; torch 2.4 one tensor at a time
    try:
        torch._C._increment_version([torch.empty(0)])
        return True
    except (RuntimeError, TypeError):
        return False


def _bump_versions_one_by_one(tensors: List[torch.Tensor]) -> None:
    for t in tensors:
        torch._C._increment_version(t)


# bump_versions(tensors): what the dispatcher does for the tensors an operation wrote
bump_versions = torch._C._increment_version if _increment_versions_at_once() else _bump_versions_one_by_one


def plain_eager() -> bool:
    """Neither traced by torch.compile nor under a dispatch mode (fake tensors,
    functionalization, make_fx, a TorchDispatchMode): the backends' functions then run
    directly, and only then do they take param storage modes and prepared address lists."""
    return not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None


class _Call:
    """A backend's operation as the optimizers call it. In plain eager mode it runs the
    backend's function directly and then bumps the version counters of what it wrote, as the
    dispatcher would: the dispatcher adds little but cost there (it converts every tensor of
    every list and bumps each mutated tensor from Python, a large share of a step's host time
    for a model of many tensors). Under torch.compile or any dispatch mode (fake tensors,
    functionalization, make_fx) it calls the operator, which those need to see."""

    def __init__(self, backend: str, declaration: Operation, function: Callable):
        self.backend, self.declaration, self.function = backend, declaration, function
        names = declaration.lists
        self._mutated_positions = [names.index(n) for n in declaration.mutated if n in names]
        self._mutated_keywords = [n for n in declaration.mutated if n not in names]
        self.__doc__ = declaration.doc

    def __call__(self, *args: Any, storage: Any = None, prepared: Any = None, **kwargs: Any) -> Any:
        if not plain_eager():
            if storage is not None or prepared is not None:
                raise RuntimeError(f"{self.declaration.name}: param storage modes and prepared address lists run in "
                                   "eager steps only")
            return operator(self.backend, self.declaration.name)(*args, **kwargs)
        if storage is not None:
            kwargs["storage"] = storage
        if prepared is not None:
            kwargs["prepared"] = prepared
        result = self.function(*args, **kwargs)
        if prepared is not None:
            mutated = list(prepared.mutated)
        else:
            mutated = [t for i in self._mutated_positions for t in args[i]]
        for name in self._mutated_keywords:
            mutated.extend(kwargs.get(name) or ())
        if mutated:
            bump_versions(mutated)
        return result


class BackendOperations:
    """The operations one backend implements, as attributes (ops.adam_step(...))."""

    def __init__(self, backend: str, extras: Optional[Dict[str, Callable]] = None):
        self.backend = backend
        for name, function in implementations(backend).items():
            setattr(self, name, _Call(backend, OPERATIONS[name], function))
        for name, function in (extras or {}).items():
            setattr(self, name, function)

    def __repr__(self) -> str:
        return f"<fused_optim operations of the {self.backend} backend>"
