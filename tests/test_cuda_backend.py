"""The CUDA backend (fused_optim._cuda + fused_optim.cuda_backend).

Without a GPU: the module builds and imports, reports its archs, the build honours
FUSED_OPTIM_CUDA, and every argument the native side can check raises ValueError (the
checks run before anything touches a device). With a GPU: parity with the fp64 reference
for every optimizer, case, dtype, state dtype and layout; CUDA graph capture; GradScaler's
found_inf and grad_scale; Adai's deterministic reduction; a tensor past 2^31 elements.

The optimizer classes are not wired to this backend here: the GPU tests drive the backend's
functions (fused_optim.operations.implementations("cuda")) directly, each call built from the
operation's declaration, and use the classes (torch backend, fp64) as the oracle.
"""
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fused_optim import _param_storage, dtypes, operations
from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import LAYOUTS, STEPS, assert_bf16_runs_bitwise_equal, grads_for, make_params, needs_compiled_step

ROOT = Path(__file__).resolve().parents[1]
HAVE_NVCC = shutil.which("nvcc") is not None or Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc").exists()
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_module_built() -> bool:
    try:
        from fused_optim import _cuda  # noqa: F401
    except ImportError:
        return False
    return True


# setup.py builds the CUDA module where a GPU is visible, or everywhere with FUSED_OPTIM_CUDA=1
# (as CI does, which then must not skip these tests); a default install on a machine with nvcc
# but no GPU has none
CUDA_MODULE = HAVE_NVCC and (os.environ.get("FUSED_OPTIM_CUDA") == "1" or _cuda_module_built())
needs_module = pytest.mark.skipif(not CUDA_MODULE, reason="fused_optim._cuda was not built here (a machine without "
                                                          "a GPU builds it with FUSED_OPTIM_CUDA=1)")


def _module():
    from fused_optim import _cuda

    return _cuda


# ---------------------------------------------------------------- without a GPU

@needs_module
def test_module_built_imports_and_reports_archs():
    """The CUDA module imports without a GPU and knows its archs."""
    cuda = _module()
    archs = cuda.compiled_archs()
    assert archs and all(re.fullmatch(r"(sm|compute)_\d+[a-z]?", a) for a in archs), archs
    assert list(cuda.archs) == archs
    from fused_optim.env import _cuda_archs

    assert _cuda_archs() == (archs, "")


def _setup_version(env_update):
    env = {k: v for k, v in os.environ.items() if k != "FUSED_OPTIM_VERSION_LABEL"}
    env.update(env_update)
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not found")
def test_build_switch_and_version_label():
    """FUSED_OPTIM_CUDA=0 leaves the CUDA module out (label +cpu); =1 builds it with nvcc, GPU
    or not (label +cu<major>); =1 without nvcc fails loudly."""
    skipped = _setup_version({"FUSED_OPTIM_CUDA": "0"})
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stdout.strip().splitlines()[-1].endswith("+cpu")
    built = _setup_version({"FUSED_OPTIM_CUDA": "1"})
    assert built.returncode == 0, built.stderr
    assert re.search(r"\+cu\d+$", built.stdout.strip().splitlines()[-1])
    missing = _setup_version({"FUSED_OPTIM_CUDA": "1", "CUDA_HOME": str(ROOT / "no-such-toolkit"),
                              "PATH": os.path.dirname(sys.executable)})
    assert missing.returncode != 0
    assert "no nvcc" in missing.stderr


# Fake but well-formed device addresses: the checks reject the call before any is used.
A = 1 << 20
ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
            maximize=False)


def _step(name, hyper, **fields):
    cuda = _module()
    return cuda.step(name, cuda.Call(**fields), hyper)


def _adam(lists=None, numels=(4,), values=(0.0,), addresses=(), dtype=0, state_dtype=0, amsgrad=False,
          grad_scale=0, found_inf=0, device=0, **hyper):
    if lists is None:  # max_exp_avg_sq keeps its place, empty without amsgrad
        lists = [[A + 4096 * k] for k in range(4)] + [[A + 4096 * 4] if amsgrad else []]
    _step("adam_step", {**ADAM, "amsgrad": amsgrad, **hyper}, lists=lists, numels=list(numels), steps=list(values),
          step_addresses=list(addresses), dtype=dtype, state_dtype=state_dtype, grad_scale=grad_scale,
          found_inf=found_inf, device=device)


@needs_module
@pytest.mark.parametrize("call,match", [
    (lambda: _adam(lists=[[A]] * 3), "expected 5 tensor lists"),
    (lambda: _adam(lists=[[A]] * 4, amsgrad=True), "expected 5 tensor lists"),
    (lambda: _adam(lists=[[A]] * 4 + [[]], amsgrad=True), "tensor list 4 has 0 entries"),
    (lambda: _adam(lists=[[A, A]] + [[A]] * 3 + [[]]), "entries"),
    (lambda: _adam(lists=[[0]] + [[A]] * 3 + [[]]), "null address"),
    (lambda: _adam(lists=[[A + 2]] + [[A]] * 3 + [[]]), "not aligned"),
    (lambda: _adam(lists=[[A + 4]] + [[A]] * 3 + [[]], dtype=1, state_dtype=1), "not aligned"),
    (lambda: _adam(numels=(-1,)), "negative numel"),
    (lambda: _adam(dtype=7), "dtype code"),
    (lambda: _adam(dtype=1, state_dtype=0), "float64 params must be float64"),
    (lambda: _adam(dtype=2, state_dtype=3), "float32 or bfloat16"),
    (lambda: _adam(values=()), "one step per tensor"),
    (lambda: _adam(values=(0.0,), addresses=(A,)), "one step per tensor"),
    (lambda: _adam(values=(), addresses=(A + 1,)), "step counter address"),
    (lambda: _adam(values=(-1.0,)), "step count"),
    (lambda: _adam(grad_scale=A + 2), "grad_scale address is misaligned"),
    (lambda: _adam(found_inf=A + 1), "found_inf address is misaligned"),
    (lambda: _adam(lr=float("nan")), "fused_optim._cuda.adam_step: lr is not finite"),
    (lambda: _adam(eps=float("inf")), "eps is not finite"),
    (lambda: _adam(maximize=0.5), "maximize is a flag"),
    (lambda: _adam(rectify=True), "unknown hyperparameter rectify"),
    (lambda: _adam(device=-1), "device index"),
    (lambda: _step("adam_step", {k: v for k, v in ADAM.items() if k != "lr"}, lists=[[A]] * 5, numels=[4],
                   steps=[0.0]), "missing hyperparameter lr"),
    (lambda: _step("nadam_step", {}), "no operation nadam_step"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_native_checks_raise_value_error_without_touching_memory(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@needs_module
def test_native_checks_of_the_other_entry_points():
    cuda = _module()
    common = dict(numels=[4], steps=[0.0])
    pass1 = dict(beta2=0.99, weight_decay=0.0, decoupled=False)
    with pytest.raises(ValueError, match="partials has 1 entries for 2 chunks"):
        _step("adai_second_moment", pass1, lists=[[A]] * 3, numels=[65537], steps=[0.0], partials=A, partials_len=1,
              out=A)
    with pytest.raises(ValueError, match="out address is null"):
        _step("adai_second_moment", pass1, lists=[[A]] * 3, partials=A, partials_len=1, out=0, **common)
    with pytest.raises(ValueError, match="partials has 3 entries for 4 x 1 chunks"):
        _step("adai_clip_sums", dict(pass1, norm_type=2.0), lists=[[A]] * 3, partials=A, partials_len=3, out=A,
              **common)
    with pytest.raises(ValueError, match="norm_type must be > 0 or"):
        _step("adai_clip_sums", dict(pass1, norm_type=0.0), lists=[[A]] * 3, partials=A, partials_len=4, out=A,
              **common)
    with pytest.raises(ValueError, match="vbar address is null"):
        _step("adai_update", dict(lr=0.1, beta0=0.1, beta2=0.99, eps=1e-3, weight_decay=0.0, decoupled=False),
              lists=[[A]] * 5, vbar_address=0, **common)
    dualadam = dict(ADAM, switch_rate=0.01)
    for flag in ("decoupled", "amsgrad", "maximize"):
        del dualadam[flag]
    with pytest.raises(ValueError, match="global_step address is misaligned"):
        _step("dualadam_step", dualadam, lists=[[A]] * 4, numels=[4], global_step_address=A + 4)
    with pytest.raises(ValueError, match="global_step must be finite and >= 0"):
        _step("dualadam_step", dualadam, lists=[[A]] * 4, numels=[4], global_step=-1.0)
    with pytest.raises(ValueError, match="expected 5 tensor lists"):
        _step("adamomentum_step", {**{k: v for k, v in ADAM.items() if k != "maximize"}, "amsgrad": True,
                                   "rectify": False}, lists=[[A]] * 4, **common)
    with pytest.raises(ValueError, match="expected 3 tensor lists"):
        _step("lion_step", dict(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0), lists=[[A]] * 4, **common)
    with pytest.raises(ValueError, match="param storage mode 2 does not serve float16 params"):
        _step("lion_step", dict(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0), lists=[[A]] * 4, dtype=3,
              storage_mode=2, **common)
    with pytest.raises(ValueError, match="tensor_indices has 0 entries for 1 tensors"):
        _step("lion_step", dict(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0), lists=[[A]] * 3, dtype=2,
              storage_mode=3, **common)
    assert cuda.chunk_count([0, 1, 65536, 65537]) == 4
    assert cuda.tensors_per_launch(5) >= 400  # a 300-param group is one launch


@needs_module
def test_operations_and_codes_are_the_declared_ones():
    """Every native operation is declared in fused_optim.operations with the declaration's
    hyperparameters in order, and the param storage and dtype codes are the Python ones."""
    cuda = _module()
    assert set(cuda.operations()) == set(operations.OPERATIONS)
    for name, fields in cuda.operations().items():
        assert tuple(fields) == operations.OPERATIONS[name].hyperparameters, name
    python = {name: getattr(_param_storage, name) for name in ("PLAIN", "MASTER", "REMAINDER", "STOCHASTIC")}
    assert cuda.storage_modes() == python
    assert cuda.dtype_codes() == {str(d).replace("torch.", ""): code for d, code in dtypes.NATIVE_CODES.items()}
    assert cuda.device_type == "cuda"


@needs_module
def test_vector_path_needs_every_pack_aligned():
    """A chunk takes 16-byte vector loads only where a role's address is a multiple of its
    pack (4 fp32 of an fp32 param; 8 fp32 states beside bf16 params), else the masked path."""
    aligned = _module().aligned_for_pack
    assert aligned(A, 0, 4, 4) and aligned(A + 16, 0, 4, 4)
    assert not aligned(A + 4, 0, 4, 4)  # a view one fp32 element into its storage
    assert aligned(A + 4, 3, 4, 4)  # ... whose element 3 is aligned again
    assert not aligned(A + 16, 0, 4, 8)  # fp32 states of bf16 params: packs of 32 bytes
    assert aligned(A, 2 ** 31, 2, 8) and not aligned(A, 2 ** 31 + 1, 2, 8)  # 64-bit offsets


@pytest.mark.skipif(not CUDA_MODULE or torch.cuda.is_available(), reason="needs the CUDA module and no GPU")
def test_a_valid_call_without_a_gpu_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="no usable CUDA device or driver"):
        _adam()


def test_backend_rejects_cpu_tensors_and_reports_availability():
    from fused_optim import cuda_backend

    ok, why = cuda_backend.available()
    assert isinstance(ok, bool) and why
    if cuda_backend._cuda is None:
        pytest.skip("fused_optim._cuda is not built")
    p = [torch.zeros(3)]
    adam_step = operations.implementations("cuda")["adam_step"]
    with pytest.raises(ValueError, match="CUDA tensors"):
        adam_step(p, p, p, p, [], [torch.zeros(())], **ADAM)


def test_every_declared_operation_is_served():
    """The generic pass serves every declared operation the module has an entry point for
    (Adai's three have their own functions): a new optimizer needs no line in cuda_backend."""
    from fused_optim import cuda_backend

    assert set(operations.implementations("cuda")) == set(operations.OPERATIONS)
    if cuda_backend._cuda is not None:
        assert set(cuda_backend._cuda.operations()) == set(operations.OPERATIONS)


# ---------------------------------------------------------------- with a GPU

def to_device_like(t: torch.Tensor, device="cuda") -> torch.Tensor:
    """A copy on `device` with the same strides and storage offset (a view one element into
    its storage stays misaligned; .cuda() would make it contiguous and aligned)."""
    t = t.detach()
    storage = t.untyped_storage().nbytes() // t.element_size()
    base = t.as_strided((storage,), (1,), 0).to(device, copy=True)
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


class CudaRun:
    """Drives cuda_backend for one optimizer case with the state an optimizer would keep:
    states shaped like their params (torch.full_like, preserve_format), per-param float32
    step counters (on the device with device_steps=True), DualAdam's float64 global step.
    A one-pass optimizer's call is built from its operation's declaration (the lists it names,
    the scalars it takes), as FusedOptimizer._run builds it; Adai runs its two passes."""

    def __init__(self, name, kwargs, params, state_dtype=None, device_steps=False):
        self.functions = operations.implementations("cuda")
        self.name = name
        cls = OPTIMIZERS[name].cls
        template = cls([torch.zeros(1, requires_grad=True)], **kwargs, backend="torch")
        self.hyper = template.hyper(template.param_groups[0], 0)
        self.operation = cls.operation
        self.params = params
        layout = template.state_layout(self.hyper)
        dtype = params[0].dtype
        sdtype = state_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
        self.states = [{k: torch.full_like(p, v, dtype=sdtype, memory_format=torch.preserve_format)
                        for k, v in layout.items()} for p in params]
        where = params[0].device if device_steps else "cpu"
        self.steps = [torch.zeros((), dtype=torch.float32, device=where) for _ in params]
        self.global_step = torch.zeros((), dtype=torch.float64, device=where)

    def column(self, key):
        return [s[key] for s in self.states]

    def step(self, grads, grad_scale=None, found_inf=None):
        h = self.hyper
        amp = dict(grad_scale=grad_scale, found_inf=found_inf)
        if self.operation is not None:
            declaration = operations.OPERATIONS[self.operation]
            lists = []
            for list_name in declaration.lists:
                if list_name == "params":
                    lists.append(self.params)
                elif list_name == "grads":
                    lists.append(grads)
                elif list_name == "steps":
                    lists.append(self.steps)
                else:
                    key = operations.state_key(list_name)
                    lists.append(self.column(key) if key in self.states[0] else [])
            scalars = {"global_step": self.global_step} if "global_step" in declaration.scalars else {}
            self.functions[self.operation](*lists, **h, **amp, **scalars)
        else:
            total = self.functions["adai_second_moment"](self.params, grads, self.column("exp_avg_sq"), self.steps,
                                                         beta2=h["beta2"], weight_decay=h["weight_decay"],
                                                         decoupled=h["decoupled"], grad_scale=grad_scale)
            vbar = total / sum(p.numel() for p in self.params)
            self.functions["adai_update"](self.params, grads, self.column("exp_avg"), self.column("exp_avg_sq"),
                                          self.column("beta1_prod"), self.steps, vbar=vbar, **h, **amp)
        # what the optimizer does after its backend calls succeeded (on the device: capturable)
        torch._foreach_add_(self.steps, 1.0)
        self.global_step.add_(1.0)


CASES = [(name, case) for name, spec in OPTIMIZERS.items() for case in spec.cases]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# 600_small: more tensors than one launch carries (450), so several launches; strided: a
# param that is not dense (every other column), whose index goes through staging copies.
# Every dtype runs the layouts that reach different kernel paths (all-masked tail, misaligned
# and transposed views, several chunks with a ragged tail, zero-size, staging); fp32 also runs
# the rest of tests/helpers.py's layouts and the many-tensor ones, whose cost is the Python
# oracle (they add no dtype-specific path), to keep the GPU job's test time short.
PATH_LAYOUTS = ["7", "views", "chunks", "zero_size", "strided"]
FP32_LAYOUTS = [layout for layout in LAYOUTS if layout not in PATH_LAYOUTS] + ["600_small"]
DTYPE_LAYOUTS = [(d, layout) for d in DTYPES for layout in PATH_LAYOUTS] + [
    (torch.float32, layout) for layout in FP32_LAYOUTS
]


def _params(layout, dtype):
    g = torch.Generator().manual_seed(3)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.05).to(dtype)

    if layout == "600_small":
        return [rnd(i % 29 + 1) for i in range(600)]
    if layout == "strided":
        return [rnd(8, 10)[:, ::2], rnd(7)]
    return make_params(layout, dtype)


def _run_parity(name, case, dtype, layout, state_dtype=None, device="cuda", steps=STEPS, after_step=None):
    """Steps the CUDA backend and the fp64 reference (the optimizer class, torch backend, on
    CPU fp64 copies) on the same grads; low-precision params and states of the oracle are
    rounded after each step to the dtype the CUDA side stores. after_step(run, oracle,
    oracle_params), when given, runs after each step's rounding."""
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    cpu_params = [p.detach() for p in _params(layout, dtype)]
    params = [to_device_like(p, device) for p in cpu_params]
    run = CudaRun(name, kwargs, params, state_dtype=state_dtype)
    oracle_params = [p.double().clone().requires_grad_() for p in cpu_params]
    oracle = spec.cls(oracle_params, **kwargs, backend="torch")
    low = dtype in (torch.bfloat16, torch.float16)
    with torch.no_grad():
        for step in range(1, steps + 1):
            grads = grads_for(cpu_params, step)
            run.step([to_device_like(g, device) for g in grads])
            for q, g in zip(oracle_params, grads):
                q.grad = g.double()
            oracle.step()
            for q in oracle_params:
                if low:
                    q.copy_(q.to(dtype).double())
                if state_dtype is not None:
                    for key, value in oracle.state[q].items():
                        if key != "step" and torch.is_tensor(value):
                            value.copy_(value.to(state_dtype).double())
            if after_step is not None:
                after_step(run, oracle, oracle_params)
    if device == "cuda":
        torch.cuda.synchronize()
    return spec, kwargs, run, oracle, oracle_params, cpu_params


def _compare(name, kwargs, spec, run, oracle, oracle_params, dtype, extra=None):
    for i, (p, q) in enumerate(zip(run.params, oracle_params)):
        rtol, atol = tolerances.param_tolerance(name, dtype, q.detach())
        if extra is not None:
            rtol, atol = extra(rtol, atol, i)
        # (Lion: a few elements may take the other sign where c is within rounding of 0)
        tolerances.assert_param_close(name, dtype, p.detach().cpu(), q.detach(), run.hyper.get("lr"), rtol, atol)
        _, param_atol = tolerances.param_tolerance(name, dtype, q.detach())
        srtol, satol = tolerances.state_tolerance(name, dtype, kwargs.get("weight_decay", 0.0), param_atol)
        if extra is not None:
            srtol, satol = BF16_STATE_ADAI if name in ("Adai", "AdaiW") else BF16_STATE
            satol += kwargs.get("weight_decay", 0.0) * param_atol
        expected = oracle.state[q]
        for key in spec.state_names:
            torch.testing.assert_close(run.states[i][key].cpu().double(), expected[key].double(), rtol=srtol,
                                       atol=satol, msg=lambda m, key=key: f"state {key}: {m}")
        if "max_exp_avg_sq" in expected:
            torch.testing.assert_close(run.states[i]["max_exp_avg_sq"].cpu().double(),
                                       expected["max_exp_avg_sq"].double(), rtol=srtol, atol=satol)


@needs_gpu
@pytest.mark.parametrize("dtype,layout", DTYPE_LAYOUTS,
                         ids=[f"{str(d).replace('torch.', '')}-{layout}" for d, layout in DTYPE_LAYOUTS])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_parity_with_fp64_reference(name, case, dtype, layout):
    spec, kwargs, run, oracle, oracle_params, _ = _run_parity(name, case, dtype, layout)
    _compare(name, kwargs, spec, run, oracle, oracle_params, dtype)


# bfloat16 states: the oracle's states are rounded to bf16 after every step. Over several steps
# the two sides drift apart legitimately: where a step's fp32 (kernel) and fp64 (oracle) results
# straddle a bf16 rounding boundary, the stored states differ by one bf16 ulp, and the next steps
# start from different values; when a moment then shrinks (a gradient changes sign), that ulp
# of its earlier magnitude is many ulps of the new one (percents of one element of exp_avg
# after a few steps). So the check is made step by step from identical inputs: after each
# step the states and params are compared, then the oracle takes the kernel's values. A step's
# states may then differ by one bf16 ulp, at most 2^-7 relative; its params by their dtype's
# tolerance plus 2^-7 of the step's own update (a flipped m or v moves the update by up to an
# ulp). Adai divides by 1 - beta1_prod, and a flip of a bf16 beta1_prod near 1 - eps moves that
# denominator by up to 2^-8 / eps relative, and a flipped v moves beta1 = 1 - beta0 vhat / vbar
# and with it m's weights: its params get 1/8 of the update and its states 2^-5. Lion's sign
# may flip where c is within a bf16 ulp of 0 (tolerances.LION_BF16_STATE_FLIP_SHARE).
BF16_STATE = (2 ** -7, 1e-6)
BF16_STATE_ADAI = (2 ** -5, 1e-6)
BF16_STATE_LAYOUTS = ["4097", "views", "zero_size"]


@needs_gpu
@pytest.mark.parametrize("layout", BF16_STATE_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_parity_with_bfloat16_states(name, case, dtype, layout):
    _check_bfloat16_states(name, case, dtype, layout, "cuda")


def _check_bfloat16_states(name, case, dtype, layout, device):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    adai = name in ("Adai", "AdaiW")
    share = 2 ** -3 if adai else 2 ** -7
    srtol, satol = BF16_STATE_ADAI if adai else BF16_STATE
    steps_checked = [0]

    def compare_then_sync(run, oracle, oracle_params):
        with torch.no_grad():
            for i, q in enumerate(oracle_params):
                p = run.params[i].detach().cpu().double()
                rtol, atol = tolerances.param_tolerance(name, dtype, q.detach())
                before = previous[i]
                moved = float((q.detach() - before).abs().max()) if q.numel() else 0.0
                tolerances.assert_param_close(name, dtype, p, q.detach(), run.hyper.get("lr"), rtol,
                                              atol + share * moved, flip_share=tolerances.LION_BF16_STATE_FLIP_SHARE)
                _, param_atol = tolerances.param_tolerance(name, dtype, q.detach())
                for key, value in oracle.state[q].items():
                    if key == "step" or not torch.is_tensor(value):
                        continue
                    mine = run.states[i][key]
                    assert mine.dtype == torch.bfloat16, key  # CudaRun keeps every state in bf16
                    torch.testing.assert_close(mine.cpu().double(), value.double(), rtol=srtol,
                                               atol=satol + kwargs.get("weight_decay", 0.0) * param_atol,
                                               msg=lambda m, key=key: f"step {steps_checked[0] + 1}, state {key}: {m}")
                    value.copy_(mine.cpu().double())
                q.copy_(p)
                previous[i] = p.clone()
        steps_checked[0] += 1

    previous = [p.detach().double() for p in _params(layout, dtype)]
    _run_parity(name, case, dtype, layout, torch.bfloat16, device, after_step=compare_then_sync)
    assert steps_checked[0] == STEPS


def _fresh(name, case, layout="chunks", dtype=torch.float32, device_steps=False, device="cuda"):
    kwargs = OPTIMIZERS[name].cases[case]
    params = [to_device_like(p, device) for p in make_params(layout, dtype)]
    return CudaRun(name, kwargs, params, device_steps=device_steps)


def _everything(run):
    return [t.clone() for t in run.params] + [t.clone() for s in run.states for t in s.values()]


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


GRAPH_CASES = [("Adam", "amsgrad"), ("AdamW", "default"), ("AdaMomentum", "rectify"), ("DualAdam", "fast_switch"),
               ("Adai", "l2"), ("AdaiW", "default"), ("Lion", "wd")]


@needs_gpu
@pytest.mark.parametrize("name,case", GRAPH_CASES, ids=[f"{n}-{c}" for n, c in GRAPH_CASES])
def test_cuda_graph_replay_equals_eager(name, case):
    """Steps on the device (capturable): one captured step replayed equals eager steps, also
    across DualAdam's switch and AdaMomentum's rectify threshold, which depend on the step."""
    eager = _fresh(name, case, device_steps=True)
    graphed = _fresh(name, case, device_steps=True)
    cpu_params = make_params("chunks", torch.float32)
    grads = [[to_device_like(g) for g in grads_for(cpu_params, step)] for step in range(1, STEPS + 1)]
    static = [g.clone() for g in grads[0]]
    # warm-up: the first step eagerly on both (loads the kernels outside the capture)
    eager.step(grads[0])
    graphed.step(static)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed.step(static)
    for step in range(1, STEPS):
        eager.step(grads[step])
        for s, g in zip(static, grads[step]):
            s.copy_(g)
        graph.replay()
    torch.cuda.synchronize()
    _assert_bitwise(_everything(eager), _everything(graphed))
    assert float(graphed.steps[0]) == STEPS and float(graphed.global_step) == STEPS


@needs_gpu
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_found_inf_changes_nothing_and_grad_scale_divides(name, case):
    _check_amp(name, case, "chunks", "cuda")


def _check_amp(name, case, layout, device):
    run = _fresh(name, case, layout, device=device)
    cpu_params = make_params(layout, torch.float32)
    grads = [to_device_like(g, device) for g in grads_for(cpu_params, 1)]
    run.step(grads)
    before = _everything(run)
    device = run.params[0].device
    run.step([g * 1e30 for g in grads], grad_scale=torch.tensor(1.0, device=device),
             found_inf=torch.tensor(1.0, device=device))
    _assert_bitwise(before, _everything(run))

    # a power-of-two scale divides exactly: scaled grads with grad_scale == the plain grads
    scaled, plain = _fresh(name, case, layout, device=device), _fresh(name, case, layout, device=device)
    scale = torch.tensor(1024.0, device=device)
    for step in range(1, 4):
        g = [to_device_like(x, device) for x in grads_for(cpu_params, step)]
        scaled.step([x * 1024.0 for x in g], grad_scale=scale, found_inf=torch.zeros((), device=device))
        plain.step(g)
    _assert_bitwise(_everything(plain), _everything(scaled))


@needs_gpu
@pytest.mark.parametrize("case", ["default", "l2"])
def test_adai_reduction_is_deterministic(case):
    _check_adai_reduction(case, "cuda", "600_small")


def _check_adai_reduction(case, device, layout):
    """Pass 1 sums in a fixed tree (no atomics): reruns give the same bits, over several
    launches and many chunks; the sum matches the fp64 reference's pass 1."""
    from fused_optim import cuda_backend
    from fused_optim.reference import adai_second_moment

    run = _fresh("Adai", case, layout="chunks", device=device)
    extra = [to_device_like(p, device) for p in _params(layout, torch.float32)]
    params = run.params + extra
    grads = [torch.randn_like(p) for p in params]
    v = [torch.rand_like(p) for p in params]
    steps = [torch.full((), float(i % 5), dtype=torch.float32) for i in range(len(params))]
    h = run.hyper
    kw = dict(beta2=h["beta2"], weight_decay=h["weight_decay"], decoupled=h["decoupled"])
    totals = [cuda_backend.adai_second_moment(params, grads, v, steps, **kw) for _ in range(3)]
    assert all(torch.equal(totals[0], t) for t in totals[1:])
    assert totals[0].dtype == torch.float64 and totals[0].dim() == 0 and totals[0].device == params[0].device
    expected = adai_second_moment([p.double().cpu() for p in params], [g.double().cpu() for g in grads],
                                  [x.double().cpu() for x in v], [float(s) + 1 for s in steps], **kw)
    torch.testing.assert_close(totals[0].cpu(), expected, rtol=1e-6, atol=0)


def _check_dualadam_switch(device):
    """switch_rate 0.05 turns pure Adam at step 19 because 1 - 19 * 0.05 < 0.05 in float64
    (reference.dualadam_blend_weight); with the global step on the device the kernel decides
    it, and a contracted a*b+c there would keep blending one step longer."""
    kwargs = {"switch_rate": 0.05}
    cpu_params = [p.detach() for p in make_params("7", torch.float32)]
    run = CudaRun("DualAdam", kwargs, [to_device_like(p, device) for p in cpu_params], device_steps=True)
    oracle_params = [p.double().clone().requires_grad_() for p in cpu_params]
    oracle = OPTIMIZERS["DualAdam"].cls(oracle_params, **kwargs, backend="torch")
    with torch.no_grad():
        for step in range(1, 21):
            grads = grads_for(cpu_params, step)
            run.step([to_device_like(g, device) for g in grads])
            for q, g in zip(oracle_params, grads):
                q.grad = g.double()
            oracle.step()
    for p, q in zip(run.params, oracle_params):
        torch.testing.assert_close(p.detach().cpu().double(), q.detach(), rtol=tolerances.FP32[0], atol=tolerances.FP32[1])


@needs_gpu
def test_dualadam_switch_step_with_the_step_on_the_device():
    _check_dualadam_switch("cuda")


@needs_gpu
@pytest.mark.slow
def test_tensor_past_2_31_elements():
    """64-bit indexing: one bf16 tensor of 2^31 + 5 elements (bf16 states: 4 tensors of 4 GiB);
    elements on both sides of 2^31 are checked against the reference on those elements."""
    n = 2 ** 31 + 5
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2 ** 30:
        pytest.skip("needs 24 GiB of GPU memory")
    from fused_optim.reference import adam_step

    p = torch.full((n,), 0.5, dtype=torch.bfloat16, device="cuda")
    g = torch.full((n,), 0.125, dtype=torch.bfloat16, device="cuda")
    m = torch.zeros(n, dtype=torch.bfloat16, device="cuda")
    v = torch.zeros(n, dtype=torch.bfloat16, device="cuda")
    probe = torch.arange(2 ** 31 - 8, n, device="cuda")
    g[probe] = torch.linspace(-1, 1, probe.numel(), device="cuda").to(torch.bfloat16)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True, amsgrad=False,
                 maximize=False)
    ref = [t[probe].double().cpu() for t in (p, g, m, v)]
    operations.implementations("cuda")["adam_step"]([p], [g], [m], [v], [], [torch.zeros(())], **hyper)
    adam_step([ref[0]], [ref[1]], [ref[2]], [ref[3]], None, [1.0], **hyper)
    torch.testing.assert_close(p[probe].double().cpu(), ref[0].to(torch.bfloat16).double(), rtol=2 ** -7, atol=0)
    torch.testing.assert_close(m[probe].double().cpu(), ref[2].to(torch.bfloat16).double(), rtol=2 ** -7, atol=0)
    assert float(p[0]) != 0.5  # the first element moved too


# ---------------------------------------------------------------- the kernels as host code

# tests/cuda_emulation/cuda_runtime.h runs csrc/cuda/*.cu on host memory (each CUDA thread a
# coroutine, real barriers, block-wide shared memory), so every kernel's indexing, vector and
# masked paths, chunk walk, multi-launch split and reduction tree run in CI without a GPU,
# through the real bindings and cuda_backend.py (on CPU tensors). The GPU tests above repeat
# the checks on the device.

@pytest.fixture(scope="module")
def emulated_cuda(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the device tests above run the kernels themselves")
    import importlib.util
    import sysconfig
    from concurrent.futures import ThreadPoolExecutor

    import pybind11

    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    out = tmp_path_factory.mktemp("emulated_cuda")
    # hidden symbols, as setup.py builds the module: the emulated module and a real build
    # loaded beside it keep their own registries of operations
    flags = ["g++", "-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-DFO_CUDA_EMULATION",
             f"-I{ROOT / 'tests' / 'cuda_emulation'}", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}"]
    # the kernels as C++, and the host code both modules link (setup.py's HOST_SOURCES)
    sources = [(path, ["-x", "c++"]) for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))]
    sources += [(path, []) for path in sorted((ROOT / "csrc" / "host").glob("*.cpp"))]

    def compile_one(source):
        path, language = source
        obj = out / (path.parent.name + "_" + path.stem + ".o")
        subprocess.run(flags + language + ["-c", str(path), "-o", str(obj)], check=True, timeout=600)
        return str(obj)

    with ThreadPoolExecutor(int(os.environ.get("MAX_JOBS", "2") or 2)) as pool:
        objects = list(pool.map(compile_one, sources))
    module = out / ("_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(flags + ["-shared", '-DFO_CUDA_ARCHS="emulated"',
                            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
                            str(ROOT / "csrc" / "bindings_cuda.cpp"), *objects, "-o", str(module)],
                   check=True, timeout=600)
    spec = importlib.util.spec_from_file_location("_cuda", module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_emulated_module_serves_host_memory(emulated_cuda):
    """The emulated build says it runs on host memory (cuda_backend serves the device type
    its module reports) and has the real build's operations."""
    assert emulated_cuda.device_type == "cpu"
    assert set(emulated_cuda.operations()) == set(operations.OPERATIONS)


@pytest.fixture
def on_host(emulated_cuda, monkeypatch):
    """cuda_backend on CPU tensors against the emulated kernels (the module says its device
    type is "cpu"). Steps on the params' device are read through their addresses, as on a GPU
    with capturable steps."""
    from fused_optim import cuda_backend

    monkeypatch.setattr(cuda_backend, "_cuda", emulated_cuda)
    return "cpu"


# Every case on small layouts that reach each kernel path: fp32 and bf16 vector packs with a
# masked tail next to misaligned (masked) and transposed views, fp64, fp16 through staging,
# zero-size. Emulated threads are slow, so the multi-chunk and multi-launch layouts run for a
# few cases only (each kernel at least once).
EMULATED = [(torch.float32, "views"), (torch.bfloat16, "views"), (torch.float64, "7"),
            (torch.float16, "strided"), (torch.float32, "zero_size")]
EMULATED_CHUNKS = [("Adam", "amsgrad"), ("AdamW", "amsgrad_maximize"), ("AdaMomentum", "rectify_amsgrad"),
                   ("DualAdam", "fast_switch"), ("Adai", "l2"), ("Lion", "wd")]


@pytest.mark.parametrize("dtype,layout", EMULATED,
                         ids=[f"{str(d).replace('torch.', '')}-{layout}" for d, layout in EMULATED])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_emulated_kernels_match_the_fp64_reference(on_host, name, case, dtype, layout):
    spec, kwargs, run, oracle, oracle_params, _ = _run_parity(name, case, dtype, layout, device=on_host)
    _compare(name, kwargs, spec, run, oracle, oracle_params, dtype)


@pytest.mark.parametrize("name,case", EMULATED_CHUNKS, ids=[f"{n}-{c}" for n, c in EMULATED_CHUNKS])
def test_emulated_kernels_over_several_chunks(on_host, name, case):
    """3 x 70001 elements: several 65536-element chunks (blocks) of one tensor, ragged tails."""
    spec, kwargs, run, oracle, oracle_params, _ = _run_parity(name, case, torch.float32, "chunks", device=on_host)
    _compare(name, kwargs, spec, run, oracle, oracle_params, torch.float32)


@pytest.mark.parametrize("name", ["AdamW", "Adai", "Lion"])
def test_emulated_kernels_over_several_launches(on_host, name):
    """600 tensors: more than one launch's table (450) for every kernel; two steps (600
    emulated blocks with barriers are slow)."""
    spec, kwargs, run, oracle, oracle_params, _ = _run_parity(name, "default", torch.float32, "600_small",
                                                              device=on_host, steps=2)
    _compare(name, kwargs, spec, run, oracle, oracle_params, torch.float32)


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_emulated_kernels_with_bfloat16_states(on_host, name, case):
    _check_bfloat16_states(name, case, torch.float32, "views", on_host)


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_emulated_found_inf_and_grad_scale(on_host, name, case):
    _check_amp(name, case, "views", on_host)


@pytest.mark.parametrize("case", ["default", "l2"])
def test_emulated_adai_reduction(on_host, case):
    _check_adai_reduction(case, on_host, "views")


@pytest.mark.parametrize("norm_type", [2.0, 3.0, math.inf, -math.inf], ids=["l2", "l3", "inf", "-inf"])
@pytest.mark.parametrize("case", ["l2", "decoupled"])
def test_emulated_adai_clip_sums(on_host, case, norm_type):
    """Adai's clipped pass 1 (norm part and quadratic in the clip coefficient) against the fp64
    reference, on fp64 and on fp32 params of the vector/masked layouts."""
    from fused_optim import cuda_backend

    from .test_clipping import check_adai_clip_sums

    check_adai_clip_sums(cuda_backend, case, norm_type)
    check_adai_clip_sums(cuda_backend, case, norm_type, params=make_params("views", torch.float32))


def test_emulated_adai_clip_sums_over_several_chunks(on_host):
    """3 x 70001 elements: several chunks' partials in the totals' trees (and the max)."""
    from fused_optim import cuda_backend

    from .test_clipping import check_adai_clip_sums

    params = make_params("chunks", torch.float32)
    check_adai_clip_sums(cuda_backend, "l2", 2.0, params=params)
    check_adai_clip_sums(cuda_backend, "decoupled", math.inf, params=params)


def test_emulated_dualadam_switch_step(on_host):
    _check_dualadam_switch(on_host)


@pytest.mark.parametrize("function", list(operations.OPERATIONS))
@needs_compiled_step
def test_emulated_operators_pass_opcheck(on_host, function):
    """torch.library.opcheck on each fused_optim::cuda_* operator (schema, fake kernel,
    functionalization), defined from the declaration over this backend's function."""
    from .test_compile import _op_arguments

    args, kwargs = _op_arguments(function, torch.float32)
    torch.library.opcheck(operations.operator("cuda", function).default, args, kwargs)


@pytest.mark.parametrize("layout", ["4097", "views"])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_emulated_bfloat16_states(on_host, name, case, layout):
    _check_bfloat16_states(name, case, torch.bfloat16, layout, on_host)


# ---------------------------------------------------------------- bf16/fp16 param storage

@pytest.fixture
def cuda_classes_on_host(on_host, monkeypatch):
    """The optimizer classes with backend="cuda" on CPU tensors, against the emulated kernels."""
    from fused_optim import backends, cuda_backend

    serves = backends.serves
    monkeypatch.setattr(backends, "serves", lambda b, *a, **k: (True, "emulated") if b == "cuda" else serves(b, *a, **k))
    monkeypatch.setitem(backends._implementations, "cuda", operations.BackendOperations("cuda"))
    return cuda_backend


PARAM_MODE_CASES = [(name, option) for name in OPTIMIZERS
                    for option in ("master_weights", "param_remainders", "stochastic_rounding")]


@pytest.mark.parametrize("name,option", PARAM_MODE_CASES, ids=[f"{n}-{o}" for n, o in PARAM_MODE_CASES])
def test_emulated_param_modes_equal_the_unfused_path(cuda_classes_on_host, name, option, monkeypatch):
    """The kernels keep masters/remainders/stochastic rounding in their one pass
    (csrc/cuda/param_access.cuh): the bits of the unfused path (the same kernels on fp32
    copies, params written back after), params and every state, 3 steps; with L2 for Adai
    (its pass 1 reads the master's p) and clipping (Adai's fused norm pass reads it too)."""
    from fused_optim import cuda_backend
    from fused_optim.optimizers import _mixed_precision as mixed

    spec = OPTIMIZERS[name]
    kwargs = dict(spec.cases.get("l2", spec.cases["default"]), backend="cuda", max_grad_norm=0.05, **{option: True})
    gen = torch.Generator().manual_seed(0)
    shapes = [(33, 7), (129,), (5, 3)]
    initial = [(torch.randn(s, generator=gen) * 0.05).to(torch.bfloat16) for s in shapes]
    runs = []
    original = cuda_backend._storage_fields
    modes = []  # the storage mode of every native call
    monkeypatch.setattr(cuda_backend, "_storage_fields",
                        lambda storage: modes.append(storage.mode if storage else 0) or original(storage))
    for fuse in (True, False):
        monkeypatch.setattr(mixed, "FUSED_BACKENDS", ("cuda",) if fuse else ())
        modes.clear()
        params = [t.clone().requires_grad_() for t in initial]
        opt = spec.cls(params, **kwargs)
        for step in range(1, 4):
            for p, g in zip(params, grads_for(params, step)):
                p.grad = g
            opt.step()
        assert set(modes) == ({_param_storage.OPTION_MODES[option]} if fuse else {0})
        runs.append((params, opt))
    (fused, fused_opt), (plain, plain_opt) = runs
    assert_bf16_runs_bitwise_equal(fused, fused_opt, plain, plain_opt)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_emulated_planned_steps_equal_the_full_path(cuda_classes_on_host, name):
    """The step plan's prepared address lists (tests/test_step_plan.py) through the cuda
    backend: every optimizer's planned steps give the full path's bits."""
    from .test_step_plan import Twins

    twins = Twins(name, "cuda")
    for expect in (False, True, True):
        twins.step(expect_planned=expect)
