"""What is measured: each optimizer's implementations (our backends) and its peers.

Rows of one optimizer group, all on the same tensors of one case and dtype configuration:
- "ours:<backend>": fused_optim's class with backend= torch / cpu / cuda / triton, each where
  fused_optim.availability says it exists and it serves the device (cpu: CPU tensors only;
  cuda, triton: CUDA tensors only);
- "compiled": torch.compile of our reference step (fused_optim.reference, what backend="torch"
  runs) at a fixed step count, so it compiles once per case; its compile time is reported;
- "authors": the per-tensor loop with the structure of the authors' code
  (fused_optim/reference/authors.py), for Adai, AdaiW, AdaMomentum, InvAdam, DualAdam;
- "pytorch_optimizer": that package's Adai / DualAdam, when it is installed (optional);
- "fused", "foreach": torch.optim.AdamW (Adam in the Adam group); measured in the AdamW and
  Adam groups only: every other optimizer's speed-up over them refers to the AdamW group.
With --clip MAX_NORM, also "<key>+clip" rows: our classes with max_grad_norm=MAX_NORM (the
norm and the clip inside the step) and torch.nn.utils.clip_grad_norm_(foreach=True) followed by
torch.optim's step, on its own copy of the grads (clip_grad_norm_ rescales them in place).
"""
import gc
import importlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fused_optim
from fused_optim.backends import serves
from fused_optim.dtypes import math_dtype
from fused_optim.operations import OPERATIONS, state_key
from fused_optim.reference import authors
from fused_optim.registry import OPTIMIZERS as REGISTRY

from .names import OPTIMIZERS as NAMES
from .names import PRECISION_MODES

TORCH_PEERS = ("fused", "foreach")
FIXED_STEP = 10  # the compiled reference step runs at this step count (one compile per case)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class OptimizerCase:
    name: str
    ours: type
    kwargs: Dict  # hyperparameters, the same for every implementation of the group
    authors: Optional[type] = None
    peer: Optional[type] = None  # torch.optim class measured fused/foreach in this group
    # pytorch_optimizer's class name and the kwargs that give the same hyperparameters
    pytorch_optimizer: Optional[Tuple[str, Dict]] = None


# Every optimizer of the registry in the command line's order (names.OPTIMIZERS), with its
# benchmark group (bench_kwargs: decoupled or zero weight decay, as Adai's coupled L2 also
# reads p in pass 1).
OPTIMIZERS = tuple(
    OptimizerCase(name, spec.cls, spec.bench_kwargs, getattr(authors, spec.authors) if spec.authors else None,
                  spec.torch_peer, spec.pytorch_optimizer)
    for name in NAMES for spec in [REGISTRY[name]]
)
BY_NAME = {o.name: o for o in OPTIMIZERS}


def supports_state_dtype(case: OptimizerCase) -> bool:
    """The state_dtype constructor option is being added to the classes; bf16-state rows are
    measured only where it exists."""
    return "state_dtype" in inspect.signature(case.ours.__init__).parameters


def pytorch_optimizer_module():
    """(module or None, why not)."""
    try:
        return importlib.import_module("pytorch_optimizer"), "installed"
    except ImportError:
        return None, "not installed (optional: pip install pytorch_optimizer)"


def bytes_per_element(name: str, param_dtype: torch.dtype, state_dtype: torch.dtype, cpu_design: bool) -> int:
    """Bytes one step really moves per element with these dtypes, from the registry's fp32
    counts: its states are each read and written (2 * len(state_names) state accesses), the
    rest are param/grad accesses (read p, g; write p: 3 for the Adam family; Adai also reads
    g in its reduction pass: 4). cpu_design adds what our CPU kernels move beyond that minimum
    (registry bytes_moved_cpu; today none: Adai's extra grad read is already in the minimum)."""
    spec = REGISTRY[name]
    state_accesses = 2 * len(spec.state_names)
    fp32 = spec.bytes_moved_cpu if cpu_design else spec.bytes_per_element
    pg_accesses = (fp32 - 4 * state_accesses) // 4
    return pg_accesses * param_dtype.itemsize + state_accesses * state_dtype.itemsize


class Workload:
    """Initial param values and fixed random grads of one case, set once on the device. Each
    implementation gets its own params, starting from the same values, sharing the grads."""

    def __init__(self, shapes, device: torch.device, dtype: torch.dtype, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.initial = [torch.randn(s, generator=gen, device=device).to(dtype) for s in shapes]
        self.grads = [(torch.randn(s, generator=gen, device=device) * 1e-2).to(dtype) for s in shapes]
        self.numel = sum(t.numel() for t in self.initial)
        self.device, self.dtype = device, dtype

    def params(self) -> List[torch.Tensor]:
        params = [t.clone() for t in self.initial]
        for p, g in zip(params, self.grads):
            p.grad = g
        return params


@dataclass
class Impl:
    key: str  # "ours:cpu", "compiled", "authors", ...
    step: Callable[[], object]
    param_dtype: torch.dtype
    state_dtype: torch.dtype
    cpu_design: bool = False  # bytes counted as our CPU kernels move them
    extra: Dict = field(default_factory=dict)  # compile_s for compiled rows
    # grad-sized accesses beyond the step's own (clip rows: the norm's read of every grad, and
    # for clip_grad_norm_ / a divided copy of the grads the rescale's read and write)
    extra_grad_accesses: int = 0
    # bytes per element beyond the step's own: the masters/remainders of --precision rows
    extra_bytes: int = 0


# --precision (names.PRECISION_MODES): bytes per element each mode adds to the plain in-place
# step (whose param is read and written in its dtype): masters: the fp32 master is read instead
# of the param and written besides it, (4 - s) + 4 for params of s bytes; remainders: the int16
# remainder is read and written, 4; stochastic rounding: nothing (a hash per element instead of
# memory)
def precision_bytes(option: str, param_dtype: torch.dtype) -> int:
    if option == "master_weights":
        return 8 - param_dtype.itemsize
    return 4 if option == "param_remainders" else 0


def precision_serves(option: str, param_dtype: torch.dtype) -> bool:
    """master weights: bf16 and fp16 params; remainders and stochastic rounding: bf16."""
    if option == "master_weights":
        return param_dtype in (torch.bfloat16, torch.float16)
    return param_dtype == torch.bfloat16


# what clipping adds per element, in grad-sized accesses: the norm reads every grad; the
# backends that divide inside their loops need nothing more; the torch backend divides a copy
# (read + write), as clip_grad_norm_ rescales in place (read + write)
CLIP_ACCESSES = {"cpu": 1, "cuda": 1, "triton": 1, "torch": 3, "peer": 3}
# Adai's reduction pass reads every grad anyway: on the kernel backends it takes the norm in
# that same read (adai_clip_sums), so clipping adds no access at all
FUSED_NORM_OPTIMIZERS = ("Adai", "AdaiW")


def clip_accesses(backend: str, optimizer: str) -> int:
    if backend in ("cpu", "cuda", "triton") and optimizer in FUSED_NORM_OPTIMIZERS:
        return 0
    return CLIP_ACCESSES[backend]


class Skip(Exception):
    """This implementation cannot run in this group; the message says why."""


def reference_step(case: OptimizerCase, params, grads, state_dtype: torch.dtype) -> Callable[[], None]:
    """One step of the optimizer's reference functions (what backend="torch" calls) on state
    that persists between calls, at the fixed step count FIXED_STEP, with the group's
    hyperparameters as the class resolves them."""
    spec = REGISTRY[case.name]
    opt = case.ours(params, backend="torch", **case.kwargs)
    hyper = opt.hyper(opt.param_groups[0], 0)
    state = {k: [torch.full_like(p, 1.0 if k == "beta1_prod" else 0.0, dtype=state_dtype) for p in params]
             for k in spec.state_names}
    steps = [float(FIXED_STEP)] * len(params)
    ref = fused_optim.reference
    declaration = OPERATIONS.get(case.ours.operation or "")
    if declaration is not None:  # one pass: its reference function, with the lists it declares
        lists = [params, grads] + [state.get(state_key(name)) for name in declaration.state_lists()]
        keywords = dict(hyper)
        if "steps" in declaration.lists:
            lists.append(steps)
        if "global_step" in declaration.scalars:
            keywords["global_step"] = FIXED_STEP
        function = declaration.reference_function()
        return lambda: function(*lists, **keywords)
    count = sum(p.numel() for p in params)

    def adai():
        total = ref.adai_second_moment(params, grads, state["exp_avg_sq"], steps, beta2=hyper["beta2"],
                                       weight_decay=hyper["weight_decay"], decoupled=hyper["decoupled"])
        ref.adai_update(params, grads, state["exp_avg"], state["exp_avg_sq"], state["beta1_prod"], steps,
                        vbar=total / count, **hyper)
    return adai


def _compile(step: Callable[[], None], device: torch.device) -> Tuple[Callable[[], None], Dict]:
    """torch.compile the step and run it once; the time of that first call (the compile) is
    reported, not timed. Compiled with dynamic shapes, so the sweep's sizes share one graph per
    optimizer, dtype and tensor count (the later cases' first call finds it compiled). Every
    group's step is one of four code objects with other tensors in its closure: the recompile
    limit is raised so that dynamo never silently falls back to eager."""
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 512))
    compiled = torch.compile(step, dynamic=True)
    start = time.perf_counter()
    compiled()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return compiled, {"compile_s": time.perf_counter() - start}


def build_group(case: OptimizerCase, workload: Workload, state_dtype: torch.dtype, backends: List[str],
                peers: List[str], compile_max_tensors: int,
                clip: Optional[float] = None, precision: Sequence[str] = ()) -> Tuple[List[Impl], List[Tuple[str, str]]]:
    """The implementations of one group, and (key, reason) for each one that cannot run."""
    device, dtype = workload.device, workload.dtype
    default_state = state_dtype == math_dtype(dtype)
    impls: List[Impl] = []
    skipped: List[Tuple[str, str]] = []

    def attempt(key: str, make: Callable[[], Impl]) -> None:
        try:
            impl = make()
        except Skip as why:
            skipped.append((key, str(why)))
            return
        except Exception as err:  # a peer that cannot run these tensors: say so, measure the rest
            skipped.append((key, f"{type(err).__name__}: {err}"))
            return
        impls.append(impl)

    def ours(backend: str, clipped: bool, **options) -> Impl:
        ok, why = serves(backend, device)
        if ok and backend in ("cuda", "triton") and device.type != "cuda":
            ok, why = False, f"the {backend} backend serves CUDA tensors only"
        if not ok:
            raise Skip(why)
        kwargs = dict(case.kwargs)
        if not default_state:
            if not supports_state_dtype(case):
                raise Skip(f"{case.name} has no state_dtype option in fused_optim {fused_optim.__version__}")
            kwargs["state_dtype"] = state_dtype
        if clipped:
            kwargs["max_grad_norm"] = clip
        opt = case.ours(workload.params(), backend=backend, **kwargs, **options)
        opt.step()  # fails here, not in the timed loop, if this backend refuses these tensors
        return Impl(f"ours:{backend}" + ("+clip" if clipped else ""), opt.step, dtype, state_dtype,
                    cpu_design=backend == "cpu", extra_grad_accesses=clip_accesses(backend, case.name) if clipped else 0)

    for backend in backends:
        for clipped in (False, True) if clip is not None else (False,):
            attempt(f"ours:{backend}" + ("+clip" if clipped else ""),
                    lambda backend=backend, clipped=clipped: ours(backend, clipped))
        for option in precision:
            if not precision_serves(option, dtype):
                continue

            def kept(backend=backend, option=option):
                impl = ours(backend, False, **{option: True})
                impl.key += PRECISION_MODES[option]
                impl.extra_bytes = precision_bytes(option, dtype)
                return impl
            attempt(f"ours:{backend}{PRECISION_MODES[option]}", kept)

    # peers that keep their states in the param dtype run in the group with the default state
    # dtype (a bf16-param group compares against what those users run: bf16 states) and in the
    # group whose state dtype is the param dtype
    own_state_ok = default_state or state_dtype == dtype
    for peer in peers:
        if peer in TORCH_PEERS:
            if case.peer is None or not own_state_ok:
                continue

            def torch_optim(peer=peer):
                opt = case.peer(workload.params(), **{peer: True}, **case.kwargs)
                opt.step()
                return Impl(peer, opt.step, dtype, dtype)
            attempt(peer, torch_optim)
            if clip is not None:
                def torch_optim_clipped(peer=peer):
                    params = workload.params()
                    for p in params:
                        p.grad = p.grad.clone()  # clip_grad_norm_ rescales in place
                    opt = case.peer(params, **{peer: True}, **case.kwargs)

                    def step():
                        torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
                        opt.step()
                    step()
                    return Impl(peer + "+clip", step, dtype, dtype, extra_grad_accesses=CLIP_ACCESSES["peer"])
                attempt(peer + "+clip", torch_optim_clipped)
        elif peer == "compiled":
            def compiled():
                if workload_tensors(workload) > compile_max_tensors:
                    raise Skip(f"{workload_tensors(workload)} tensors > --compile-max-tensors "
                               f"{compile_max_tensors} (compile time grows with the tensor count)")
                params = [p.detach() for p in workload.params()]
                step, extra = _compile(reference_step(case, params, workload.grads, state_dtype), device)
                return Impl("compiled", step, dtype, state_dtype, extra=extra)
            attempt("compiled", compiled)
        elif peer == "authors":
            if case.authors is None or not own_state_ok:
                continue

            def author_loop():
                opt = case.authors(workload.params(), **case.kwargs)
                opt.step()
                return Impl("authors", opt.step, dtype, dtype)
            attempt("authors", author_loop)
        elif peer == "te":
            # TransformerEngine's FusedAdam keeping fp32 master weights of bf16/fp16 params: the
            # peer of the --precision rows (CUDA only; optional, like pytorch_optimizer)
            if case.name not in ("Adam", "AdamW") or dtype not in (torch.bfloat16, torch.float16) or not precision:
                continue

            def transformer_engine():
                if device.type != "cuda":
                    raise Skip("TransformerEngine's FusedAdam runs on CUDA only")
                try:
                    from transformer_engine.pytorch.optimizers import FusedAdam
                except ImportError as err:
                    raise Skip(f"transformer_engine is not installed ({err})") from err
                kwargs = dict(case.kwargs)
                opt = FusedAdam(workload.params(), adam_w_mode=case.name == "AdamW", master_weights=True, **kwargs)
                opt.step()
                return Impl("te", opt.step, dtype, torch.float32, extra_bytes=precision_bytes("master_weights", dtype))
            attempt("te", transformer_engine)
        elif peer == "pytorch_optimizer":
            if case.pytorch_optimizer is None or not own_state_ok:
                continue

            def other_library():
                module, why = pytorch_optimizer_module()
                if module is None:
                    raise Skip(why)
                cls_name, kwargs = case.pytorch_optimizer
                cls = getattr(module, cls_name, None)
                if cls is None:
                    raise Skip(f"pytorch_optimizer {getattr(module, '__version__', '?')} has no {cls_name}")
                opt = cls(workload.params(), **kwargs)
                opt.step()
                return Impl("pytorch_optimizer", opt.step, dtype, dtype)
            attempt("pytorch_optimizer", other_library)
    return impls, skipped


def workload_tensors(workload: Workload) -> int:
    return len(workload.initial)


def free(device: torch.device) -> None:
    """Release a group's params and states before the next group allocates its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
