"""The triton backend (fused_optim.triton_backend) against the fp64 reference, and its
contract: GradScaler inputs, device-read steps, deterministic Adai sums, one launch per call
from a cached pointer table, no recompilation for new hyperparameters, the operators.

The optimizers, their cases and states come from fused_optim.registry, the calls from the
declarations of fused_optim.operations: a new optimizer there is covered here. The oracle is
the torch backend (fused_optim.reference behind the same contract) on fp64 copies.

Without a CUDA device the kernels run under the Triton interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton). On a GPU machine
the same tests run on CUDA tensors. Sizes are small: the interpreter runs each block in numpy.
"""
import importlib

import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the triton backend cannot run")

from fused_optim import operations, reference  # noqa: E402
from fused_optim.operations import OPERATIONS, state_key  # noqa: E402
from fused_optim.registry import OPTIMIZERS  # noqa: E402

from .helpers import needs_compiled_step  # noqa: E402
from .tolerances import assert_param_close, param_tolerance, state_tolerance  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


tb = importlib.import_module("fused_optim.triton_backend")
if type(tb._IMPORT_ERROR).__name__ == "TritonTooOld":
    pytest.skip(str(tb._IMPORT_ERROR), allow_module_level=True)
if tb._IMPORT_ERROR is not None:  # triton imports: then the backend must, too (or say it is too old)
    raise tb._IMPORT_ERROR
mt = tb._mt

ok, why = tb.available()
if not ok:
    pytest.skip(f"triton backend unavailable: {why}", allow_module_level=True)

TRITON = operations.BackendOperations("triton")
importlib.import_module("fused_optim.torch_backend")
ORACLE = operations.BackendOperations("torch")


# ---------------------------------------------------------------------------------------------
# Every launch, as triton's JIT keys its compile cache
# ---------------------------------------------------------------------------------------------


def _arg_key(value) -> object:
    """How triton's JIT specializes one runtime argument (runtime/jit.py, specialize_impl):
    a tensor by dtype and 16-byte alignment, an int by == 1 and divisibility by 16, a float
    annotated tl.float64 not at all."""
    if isinstance(value, torch.Tensor):
        return ("*" + str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("u1", value)
    if isinstance(value, int):
        return ("i", value == 1, value % 16 == 0)
    return ("fp64",)


class LaunchLog:
    """The compile-cache key of every launch (multi_tensor.launch, through which every kernel
    launch goes), computed as triton's JIT computes it: the constexprs' values, the launch
    options and each runtime argument's specialization. The interpreter compiles nothing, so
    this is how the CPU tests check that a new lr or beta does not make a new kernel; on a GPU
    the tests also count the JIT's own cache."""

    def __init__(self):
        self.keys = set()
        self.names = []  # the kernel of every launch, in order

    def record(self, kernel, args, constexprs, options) -> None:
        name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
        self.keys.add((name, tuple(_arg_key(a) for a in args),
                       tuple(sorted((k, str(v)) for k, v in constexprs.items())),
                       tuple(sorted((k, str(v)) for k, v in options.items()))))
        self.names.append(name)

    def variants(self, name: str) -> int:
        return sum(1 for key in self.keys if key[0] == name)


@pytest.fixture
def launches(monkeypatch):
    log = LaunchLog()
    launch = mt.launch

    def recorded(kernel, grid, args, constexprs, num_warps=4):
        log.record(kernel, args, constexprs, mt.launch_options(num_warps))
        launch(kernel, grid, args, constexprs, num_warps)

    monkeypatch.setattr(mt, "launch", recorded)
    return log


# ---------------------------------------------------------------------------------------------
# Layouts, cases, and the two implementations stepped side by side
# ---------------------------------------------------------------------------------------------

BF16_STATE = torch.bfloat16


def _rnd(gen, *shape, dtype):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.05).to(dtype)


def make_params(dtype, seed=0):
    """Sizes 1 and 7, one tensor over two blocks (BLOCK is 1024 here), a zero-size one, two
    transposed views (one with a matching transposed grad: walked in place; one with a
    contiguous grad: staged through copies) and a view one element into its storage."""
    gen = torch.Generator().manual_seed(seed)
    on_device = lambda *shape: _rnd(gen, *shape, dtype=dtype).to(DEVICE)  # noqa: E731
    # views are taken on the device (a copy to the device would make them contiguous)
    return [on_device(1), on_device(7), on_device(1500), on_device(0), on_device(33, 65).t(), on_device(9, 5).t(),
            on_device(1032)[1:]]


STAGED_INDEX = 5  # its grad is made contiguous: the layouts differ, so it goes through staging


def make_grads(params, step, seed=1, scale=0.1):
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    grads = []
    for i, p in enumerate(params):
        values = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
        if i == STAGED_INDEX:
            grad = torch.empty(p.shape, dtype=p.dtype, device=DEVICE)
        else:
            grad = torch.empty_like(p, memory_format=torch.preserve_format)
        grad.copy_(values)
        grads.append(grad)
    return grads


# "<optimizer>-<case>" -> (registry entry, constructor kwargs) of every case in fused_optim/registry.py
CASES = {f"{spec.name}-{case}": (spec, kwargs) for spec in OPTIMIZERS.values() for case, kwargs in spec.cases.items()}
# Adai's step is two passes around a global mean; every other optimizer runs one operation
ADAI_PASSES = ("adai_second_moment", "adai_update")


def _optimizer(case):
    spec, kwargs = CASES[case]
    return spec.cls([torch.nn.Parameter(torch.zeros(1))], **kwargs, backend="torch")


def hyperparameters(case):
    """The operation's keyword hyperparameters of a case, as the optimizer hands them over."""
    optimizer = _optimizer(case)
    return optimizer.hyper(optimizer.param_groups[0], 0)


def _operations(case):
    operation = CASES[case][0].cls.operation
    return ADAI_PASSES if operation is None else (operation,)


class Run:
    """Params and states of one optimizer case's group, stepped by the triton backend (state
    dtype `state_dtype`, step counters as 0-dim float32 tensors) or, with oracle=True, by the
    torch backend in fp64. The states are those its operation declares and its optimizer's
    layout keeps (max_exp_avg_sq with amsgrad), with their initial values (Adai's beta1_prod:
    ones, kept fp32 with bf16 states as the optimizer keeps it)."""

    def __init__(self, case, params, state_dtype=None, oracle=False, hp=None):
        spec, _ = CASES[case]
        optimizer = _optimizer(case)
        self.case, self.oracle = case, oracle
        self.hp = dict(hp if hp is not None else optimizer.hyper(optimizer.param_groups[0], 0))
        self.operations = _operations(case)
        self.ops = ORACLE if oracle else TRITON
        self.params = [p.detach().double().clone() if oracle else p for p in params]
        if oracle:
            state_dtype = torch.float64
        elif state_dtype is None:
            state_dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        layout = optimizer.state_layout(self.hp)
        self.states = {}
        for name in OPERATIONS[self.operations[-1]].state_lists():
            key = state_key(name)
            dtype = torch.float32 if key in spec.cls.math_dtype_states and state_dtype == BF16_STATE else state_dtype
            self.states[name] = ([torch.full_like(p, layout[key], dtype=dtype) for p in self.params]
                                 if key in layout else [])
        self.count = 0  # steps taken (the optimizer's step counters hold this before a step)
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in self.params]
        self.global_step = torch.zeros((), dtype=torch.float64)

    def _lists(self, operation, grads):
        lists = {"params": self.params, "grads": grads, "steps": self.steps, **self.states}
        return [lists[name] for name in OPERATIONS[operation].lists]

    def _call(self, operation, grads, storage=None, **keywords):
        declaration = OPERATIONS[operation]
        hyper = {k: self.hp[k] for k in declaration.hyperparameters if k in self.hp}
        if "global_step" in declaration.scalars:
            keywords["global_step"] = self.global_step
        keywords = {k: v for k, v in keywords.items() if k in declaration.scalars}
        return getattr(self.ops, operation)(*self._lists(operation, grads), **hyper, **keywords, storage=storage)

    def step(self, grads, storage=None, **scaling):
        """One step; scaling: grad_scale and found_inf, storage: a ParamStorage."""
        if self.oracle:
            grads = [g.double() for g in grads]
        if self.operations == ADAI_PASSES:
            total = self._call("adai_second_moment", grads, storage, **scaling)
            self.last_total = total
            count = sum(p.numel() for p in self.params)
            self._call("adai_update", grads, storage, vbar=total / count, **scaling)
        else:
            self._call(self.operations[0], grads, storage, **scaling)
        found_inf = scaling.get("found_inf")
        if found_inf is None or float(found_inf) == 0:
            # the optimizer advances the counters after every call succeeded
            self.count += 1
            for step in self.steps:
                step.add_(1)
            self.global_step.add_(1)

    def tensors(self):
        """name -> list of tensors, params and every state the run keeps."""
        return {"params": self.params, **{name: tensors for name, tensors in self.states.items() if tensors}}


def run_pair(case, dtype, state_dtype=None, steps=4, seed=0):
    params = make_params(dtype, seed)
    run, oracle = Run(case, params, state_dtype), Run(case, params, oracle=True)
    low = dtype in (torch.bfloat16, torch.float16)
    for k in range(1, steps + 1):
        grads = make_grads(run.params, k)
        run.step(grads)
        oracle.step(grads)
        if low:  # the oracle's params are rounded as the tested ones are stored (tests/helpers.py)
            for q in oracle.params:
                q.copy_(q.to(dtype).double())
    return run, oracle


# bf16 states: every store rounds a state to 8 significant bits (2^-9 relative, round to
# nearest). m and v are running averages of such roundings, so they stay within ~2^-8 of the
# fp64 states relative to their size; atol is that at the tensor's largest magnitude, for
# elements passing through zero. Each step's update is formed from those states, so it
# carries ~2^-7 relative error (m, and sqrt(v) or Adai's 1 - beta1_prod, which cancels to
# ~0.1 at step 1 and multiplies beta1_prod's 2^-9 by 10): params get 2^-5 of the largest
# total movement of any element as atol (4 steps, 2^-7 each).
BF16_STATE_RTOL = 2 ** -6


def _close(actual, expected, rtol, atol, what):
    torch.testing.assert_close(actual.double().cpu(), expected.cpu(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def check_parity(case, run, oracle, initial):
    spec = CASES[case][0]
    dtype = run.params[0].dtype
    bf16_states = run.states["exp_avgs"][0].dtype == BF16_STATE
    expected, actual = oracle.tensors(), run.tensors()
    assert expected.keys() == actual.keys()
    for i, (p, q) in enumerate(zip(actual["params"], expected["params"])):
        rtol, atol = param_tolerance(spec.name, dtype, q)
        if bf16_states and q.numel():
            moved = float((q - initial[i].double()).abs().max())
            rtol, atol = max(rtol, BF16_STATE_RTOL), max(atol, 2 ** -5 * moved)
        try:
            assert_param_close(spec.name, dtype, p.cpu(), q.cpu(), run.hp["lr"], rtol, atol)
        except AssertionError as error:
            raise AssertionError(f"{case} {dtype} param {i}: {error}") from None
        for name in expected:
            if name == "params":
                continue
            s, r = actual[name][i], expected[name][i]
            srtol, satol = state_tolerance(spec.name, dtype, run.hp.get("weight_decay", 0.0), atol)
            if bf16_states and r.numel():
                srtol, satol = max(srtol, BF16_STATE_RTOL), max(satol, BF16_STATE_RTOL * float(r.abs().max()))
            _close(s, r, srtol, satol, f"{case} {dtype} {name} {i}")


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------

DTYPE_COMBOS = [
    (torch.float64, None), (torch.bfloat16, None), (torch.float16, None),
    (torch.float32, BF16_STATE), (torch.bfloat16, BF16_STATE), (torch.float16, BF16_STATE),
]
# Cases that run every dtype combination: one per operation with weight decay (the states see
# p), plus the flags that change what memory a kernel touches (amsgrad) or its scalars.
DTYPE_CASES = ["Adam-l2", "AdamW-amsgrad_maximize", "AdaMomentum-rectify_amsgrad", "DualAdam-wd", "Adai-l2",
               "Adai-decoupled", "Lion-wd"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_fp32_every_case(case):
    # 6 steps: AdaMomentum's rectify cases cross rho_t = 5 at step 6
    steps = 6 if "rectify" in case else 4
    params = make_params(torch.float32)
    initial = [p.clone() for p in params]
    run, oracle = run_pair(case, torch.float32, steps=steps)
    check_parity(case, run, oracle, initial)


@pytest.mark.parametrize("dtype,state_dtype", DTYPE_COMBOS, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("case", DTYPE_CASES)
def test_parity_dtypes(case, dtype, state_dtype):
    initial = [p.clone() for p in make_params(dtype)]
    run, oracle = run_pair(case, dtype, state_dtype, steps=4)
    check_parity(case, run, oracle, initial)


def test_every_optimizer_and_operation_is_covered():
    """The registry's optimizers all run here, and every operation the backend implements is
    one of theirs."""
    assert {spec.name for spec, _ in CASES.values()} == set(OPTIMIZERS)
    assert {op for case in CASES for op in _operations(case)} == set(operations.implementations("triton")) - {
        "adai_clip_sums"}  # Adai's pass 1 with max_grad_norm: test_adai_clip_sums_match_the_reference
    assert set(DTYPE_CASES) <= set(CASES) and set(ONE_PER_OPERATION) <= set(CASES)


# ---------------------------------------------------------------------------------------------
# The contract beyond the math
# ---------------------------------------------------------------------------------------------

# one case per operation (Adai: its two passes), fp32, for the tests below
ONE_PER_OPERATION = ["Adam-amsgrad", "AdaMomentum-rectify", "DualAdam-fast_switch", "Adai-l2", "Lion-wd"]


def _snapshot(run):
    return {name: [t.clone() for t in tensors] for name, tensors in run.tensors().items()}


def _assert_bitwise_equal(a, b, what):
    for name in a:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            assert torch.equal(x, y), f"{what}: {name}[{i}] differs"


@pytest.mark.parametrize("case", ONE_PER_OPERATION)
def test_found_inf_leaves_everything_unchanged(case):
    run = Run(case, make_params(torch.float32))
    run.step(make_grads(run.params, 1))  # nonzero states first
    before = _snapshot(run)
    found_inf = torch.ones((), dtype=torch.float32, device=DEVICE)
    grads = make_grads(run.params, 2)
    grads[1][0] = float("inf")
    run.step(grads, found_inf=found_inf)
    _assert_bitwise_equal(before, _snapshot(run), f"{case} with found_inf")
    # found_inf == 0: the step happens
    run.step(make_grads(run.params, 2), found_inf=torch.zeros((), dtype=torch.float32, device=DEVICE))
    assert not torch.equal(before["params"][2], run.params[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ONE_PER_OPERATION)
def test_grad_scale_equals_prescaled_grads(case, dtype):
    scale = torch.tensor(3.0, dtype=torch.float32, device=DEVICE)
    scaled, plain = Run(case, make_params(dtype)), Run(case, make_params(dtype))
    for k in (1, 2):
        grads = make_grads(scaled.params, k)
        scaled.step([g * scale.to(dtype) for g in grads], grad_scale=scale)
        plain.step([(g * scale.to(dtype)) / scale.to(dtype) for g in grads])
    _assert_bitwise_equal(_snapshot(plain), _snapshot(scaled), f"{case} grad_scale")


def test_adai_is_deterministic_and_its_sum_matches_the_reference(launches):
    runs = [Run("Adai-l2", make_params(torch.float32)) for _ in range(2)]
    totals = [[], []]
    for k in (1, 2):
        for run, out in zip(runs, totals):
            run.step(make_grads(run.params, k))
            out.append(run.last_total.clone())
    # pass 1, its fixed-order sum and pass 2, every one through multi_tensor.launch
    assert launches.names[:3] == ["adai_second_moment_kernel", "sum_partials_kernel", "adai_update_kernel"]
    assert len(launches.names) == 3 * 4
    _assert_bitwise_equal(_snapshot(runs[0]), _snapshot(runs[1]), "two Adai runs")
    for a, b in zip(*totals):
        assert a.dtype == torch.float64 and a.dim() == 0 and a.device == DEVICE
        assert torch.equal(a, b)
    # pass 1 alone: the sum of vhat_new without writing v
    hp = hyperparameters("Adai-l2")
    pass1 = {k: hp[k] for k in OPERATIONS["adai_second_moment"].hyperparameters}
    oracle = Run("Adai-l2", make_params(torch.float32), oracle=True)
    run = Run("Adai-l2", make_params(torch.float32))
    grads = make_grads(run.params, 1)
    v_before = [v.clone() for v in run.states["exp_avg_sqs"]]
    total = TRITON.adai_second_moment(run.params, grads, run.states["exp_avg_sqs"], run.steps, **pass1)
    expected = reference.adai_second_moment(oracle.params, [g.double() for g in grads], oracle.states["exp_avg_sqs"],
                                            [1.0] * len(grads), **pass1)
    assert all(torch.equal(a, b) for a, b in zip(v_before, run.states["exp_avg_sqs"])), "pass 1 wrote v"
    torch.testing.assert_close(total.cpu(), expected, rtol=1e-6, atol=0)


# the power norm's |g|^q as 2^(q log2 |g|) takes log2(0) on masked lanes: -inf, then 0, as meant
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf, -math.inf])
def test_adai_clip_sums_match_the_reference(norm_type):
    """Adai's pass 1 with max_grad_norm: the norm part and the quadratic of the clip
    coefficient, against the reference in fp64, with grad_scale and coupled L2."""
    hp = hyperparameters("Adai-l2")
    keywords = {k: hp[k] for k in OPERATIONS["adai_clip_sums"].hyperparameters if k in hp}
    run, oracle = Run("Adai-l2", make_params(torch.float32)), Run("Adai-l2", make_params(torch.float32), oracle=True)
    for k in (1, 2):  # nonzero v first
        grads = make_grads(run.params, k)
        run.step(grads)
        oracle.step(grads)
    grads = make_grads(run.params, 3)
    scale = torch.tensor(4.0, dtype=torch.float32, device=DEVICE)
    got = TRITON.adai_clip_sums(run.params, [g * 4 for g in grads], run.states["exp_avg_sqs"], run.steps,
                                norm_type=norm_type, grad_scale=scale, **keywords)
    expected = reference.adai_clip_sums(oracle.params, [g.double() for g in grads], oracle.states["exp_avg_sqs"],
                                        [3.0] * len(grads), norm_type=norm_type, **keywords)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-12)


def test_adai_all_zero_grads_give_finite_steps():
    """vbar == 0 at step 1 (every grad exactly zero): the ratio is 1 (OURS), nothing is NaN."""
    run, oracle = Run("Adai-default", make_params(torch.float32)), Run("Adai-default", make_params(torch.float32),
                                                                         oracle=True)
    zeros = [torch.zeros_like(p) for p in run.params]
    run.step(zeros)
    oracle.step(zeros)
    assert float(run.last_total) == 0.0
    for name, tensors in run.tensors().items():
        assert all(torch.isfinite(t).all() for t in tensors), name
    check_parity("Adai-default", run, oracle, make_params(torch.float32))


@pytest.mark.parametrize("case", ["Adam-l2", "Adai-decoupled"])
def test_steps_read_by_the_kernel_equal_steps_read_on_the_host(case, monkeypatch):
    results = []
    for host in (False, True):
        # under the interpreter the counters are on the params' device either way: the
        # decision is forced to take the host path too
        monkeypatch.setattr(tb, "_host_steps", lambda steps, device, host=host: host)
        run = Run(case, make_params(torch.float32))
        if ON_GPU and not host:
            run.steps = [s.to(DEVICE) for s in run.steps]  # capturable: counters on the device
        for k in (1, 2, 3):
            run.step(make_grads(run.params, k))
        results.append(_snapshot(run))
    _assert_bitwise_equal(results[0], results[1], f"{case} device-read vs host-read steps")


def test_dualadam_switch_predicate_is_fp64_exact():
    """xi = 0.05: 1 - 19 * 0.05 < 0.05 in fp64, so step 19 is pure Adam (spec); step 18 blends."""
    for t, blends in ((18, True), (19, False)):
        alpha, blend = reference.dualadam_blend_weight(t, 0.05)
        assert blend == blends
        hp = dict(hyperparameters("DualAdam-default"), switch_rate=0.05)
        params = make_params(torch.float64)
        run, oracle = Run("DualAdam-default", params, hp=hp), Run("DualAdam-default", params, oracle=True, hp=hp)
        run.global_step.fill_(t - 1)
        oracle.global_step.fill_(t - 1)
        grads = make_grads(run.params, 1)
        run.step(grads)
        oracle.step(grads)
        check_parity("DualAdam-default", run, oracle, params)


def test_pointer_table_is_cached_and_rebuilt_when_a_tensor_changes():
    # no staged index here: staged copies are new tensors at new addresses every call
    params = [p.contiguous() if i == STAGED_INDEX else p for i, p in enumerate(make_params(torch.float32))]
    run, oracle = Run("Adam-l2", params), Run("Adam-l2", params, oracle=True)
    grads = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]

    def step(k):
        # the same grad tensors every step, as with zero_grad(set_to_none=False)
        for g, values in zip(grads, make_grads(params, k)):
            g.copy_(values)
        run.step(grads)
        oracle.step(grads)

    step(1)
    builds = mt.PLANS.builds
    step(2)
    step(3)
    assert mt.PLANS.builds == builds, "the table was rebuilt for unchanged tensors"
    # a new state tensor (e.g. after load_state_dict) with the same values: a new table
    run.states["exp_avgs"][2] = run.states["exp_avgs"][2].clone()
    step(4)
    assert mt.PLANS.builds == builds + 1
    step(5)
    assert mt.PLANS.builds == builds + 1
    check_parity("Adam-l2", run, oracle, params)


def test_300_tensors_in_one_launch(launches):
    gen = torch.Generator().manual_seed(3)
    params = [_rnd(gen, i % 13 + 1, dtype=torch.float32).to(DEVICE) for i in range(320)]
    params[17] = params[17][:0]  # and a zero-size one among them
    run, oracle = Run("AdamW-default", params), Run("AdamW-default", params, oracle=True)
    grads = [torch.randn(p.shape, generator=gen).to(DEVICE) * 0.1 for p in params]
    run.step(grads)
    assert launches.names == ["adam_kernel"]
    oracle.step(grads)
    check_parity("AdamW-default", run, oracle, params)


@pytest.mark.parametrize("case", ONE_PER_OPERATION)
def test_new_hyperparameters_compile_nothing(case, launches):
    """lr, betas, eps, weight decay values are fp64 runtime arguments: stepping with new values
    adds no compile-cache key (computed as triton's JIT does; on a GPU also its real cache).
    The single-pass kernels branch on weight decay 0 at run time too; Adai's kernels take
    that decision on the host (a constexpr), so its weight decay stays nonzero here."""
    run = Run(case, make_params(torch.float32))
    run.step(make_grads(run.params, 1))
    names = sorted(set(launches.names))
    variants = {name: launches.variants(name) for name in names}
    cached = {name: _jit_cache_size(name) for name in names}
    floats = [h for h in OPERATIONS[run.operations[-1]].hyperparameters if not isinstance(run.hp[h], bool)]
    weight_decays = [0.02, 0.3, 0.0 if run.operations != ADAI_PASSES else 0.1, 0.07]
    for k, (factor, weight_decay) in enumerate(zip([0.5, 0.9, 0.95, 0.7], weight_decays), start=2):
        run.hp.update({h: run.hp[h] * factor for h in floats}, weight_decay=weight_decay)
        run.step(make_grads(run.params, k))
    assert sorted(set(launches.names)) == names
    for name in names:
        assert launches.variants(name) == variants[name], f"{name}: new hyperparameter values made a new variant"
        assert _jit_cache_size(name) == cached[name]


def _kernel_named(name):
    for module in ("adam", "adamomentum", "dualadam", "lion", "adai", "adai_clip"):
        kernel = getattr(importlib.import_module(f"fused_optim.triton_kernels.{module}"), name, None)
        if kernel is not None:
            return kernel
    raise KeyError(name)


def _jit_cache_size(name):
    """The JIT's compiled-kernel count on the current GPU; None under the interpreter, which
    compiles nothing (LaunchLog stands in for it there)."""
    caches = getattr(_kernel_named(name), "device_caches", None)
    if not ON_GPU or caches is None:
        return None
    return len(caches[torch.cuda.current_device()][0])


def test_zero_size_only_and_empty_lists(launches):
    params = [torch.zeros(0, device=DEVICE), torch.zeros(0, 3, device=DEVICE)]
    run = Run("Adam-default", params)
    run.step([torch.zeros_like(p) for p in params])
    hp = hyperparameters("Adam-default")
    TRITON.adam_step([], [], [], [], [], [], **hp)
    total = TRITON.adai_second_moment([], [], [], [], beta2=0.99, weight_decay=0.0, decoupled=False)
    assert float(total) == 0.0
    assert launches.names == []


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(mt, "INTERPRETED", False)
    ok, why = tb.available()
    assert ok == ON_GPU and (ok or "CUDA" in why)
    p = torch.zeros(3)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        TRITON.adam_step([p], [p.clone()], [p.clone()], [p.clone()], [], [torch.zeros(())],
                         **hyperparameters("Adam-default"))


def _small(dtype=torch.float32, n=2):
    gen = torch.Generator().manual_seed(5)
    return [_rnd(gen, 3 + i, dtype=dtype).to(DEVICE) for i in range(n)]


# the values of the arguments that no optimizer case gives (the scalars, Adai's norm type)
_OPCHECK_SCALARS = {"grad_scale": (2.0, torch.float32), "found_inf": (0.0, torch.float32),
                    "global_step": (1.0, torch.float64), "vbar": (0.01, torch.float64)}


def _opcheck_case(name):
    """(positional, keyword) arguments of one call of an operation, from its declaration and
    the hyperparameters of an optimizer case that runs it (every flag on where one can be)."""
    declaration = OPERATIONS[name]
    case = next(c for c in ONE_PER_OPERATION if name in _operations(c) or (
        name == "adai_clip_sums" and _operations(c) == ADAI_PASSES))
    hp = dict(hyperparameters(case), norm_type=math.inf, amsgrad=True)
    p = _small()
    lists = {"params": p, "grads": [torch.randn_like(x) for x in p],
             "steps": [torch.ones((), dtype=torch.float32, device=DEVICE) for _ in p]}
    args = [lists.get(n, [torch.full_like(x, 1.0 if n == "beta1_prods" else 0.0) for x in p])
            for n in declaration.lists]
    keywords = {h: hp[h] for h in declaration.hyperparameters}
    keywords.update({s: torch.tensor(v, dtype=dt, device=DEVICE) for s, (v, dt) in _OPCHECK_SCALARS.items()
                     if s in declaration.scalars})
    return args, keywords


@needs_compiled_step
@pytest.mark.parametrize("name", sorted(operations.implementations("triton")))
def test_operators_pass_opcheck(name):
    args, keywords = _opcheck_case(name)
    torch.library.opcheck(operations.operator("triton", name), args, keywords)


def test_step_counters_are_not_written_and_bad_dtypes_are_refused():
    run = Run("Adam-default", _small())
    hp = run.hp
    before = [s.clone() for s in run.steps]
    s = run.states
    TRITON.adam_step(run.params, make_grads(run.params, 1), s["exp_avgs"], s["exp_avg_sqs"], [], run.steps, **hp)
    assert all(torch.equal(a, b) for a, b in zip(before, run.steps))
    mixed = [v.double() for v in s["exp_avg_sqs"]]
    with pytest.raises(TypeError, match="share one dtype"):
        TRITON.adam_step(run.params, make_grads(run.params, 1), s["exp_avgs"], mixed, [], run.steps, **hp)
    with pytest.raises(TypeError, match="params' dtype"):
        TRITON.adam_step(run.params, [g.half() for g in make_grads(run.params, 1)], s["exp_avgs"], s["exp_avg_sqs"],
                         [], run.steps, **hp)
    with pytest.raises(ValueError, match="without the states declared before it"):
        TRITON.adam_step(run.params, make_grads(run.params, 1), s["exp_avgs"], [], s["exp_avg_sqs"], run.steps,
                         **dict(hp, amsgrad=True))


# the update of p from inf/NaN/huge m makes numpy warn under the interpreter; p is not checked
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bf16_states_are_rounded_to_nearest_even():
    """With beta1 = 0 the new m is g exactly (0 + 1 * (g - 0)), so the stored bf16 m must be
    torch's own fp32 -> bf16 conversion bit for bit: ties to even, carries into the exponent,
    overflow to inf, NaN kept. (The interpreter's own fp32 -> bf16 cast truncates.)"""
    gen = torch.Generator().manual_seed(7)
    bits = torch.randint(0, 2 ** 31, (2048,), generator=gen, dtype=torch.int64)
    bits[:256] = (bits[:256] & ~0xFFFF) | 0x8000  # exact ties: half go up (odd), half stay (even)
    bits[256:512] = (bits[256:512] & ~0xFFFF) | 0x7FFF  # just below a tie
    bits[512] = 0x3F7FFFFF  # rounds up into the next binade: 1.0
    bits[513] = 0x7F7FFFFF  # fp32 max: rounds to inf in bf16
    bits[514] = 0x7F800000  # inf
    bits[515] = 0x7FC00001  # NaN
    bits[516:600] = bits[516:600] & 0x007FFFFF  # subnormals
    sign = torch.randint(0, 2, (2048,), generator=gen, dtype=torch.int64) << 31
    g32 = ((bits | sign) & 0xFFFFFFFF).to(torch.int64)
    g32 = torch.where(g32 >= 2 ** 31, g32 - 2 ** 32, g32).to(torch.int32).view(torch.float32)
    g32 = torch.where(g32 == 0, torch.ones_like(g32), g32)  # no -0.0: 0 + (-0.0) is +0.0
    g = g32.to(DEVICE)
    p = torch.zeros_like(g)
    m = torch.zeros_like(g, dtype=torch.bfloat16)
    v = torch.zeros_like(g, dtype=torch.bfloat16)
    step = torch.zeros((), dtype=torch.float32)
    with torch.no_grad():
        TRITON.adam_step([p], [g], [m], [v], [], [step], **dict(hyperparameters("Adam-default"), beta1=0.0))
    expected = g.to(torch.bfloat16)
    nan = expected.isnan()
    assert torch.equal(m.isnan(), nan)
    assert torch.equal(m[~nan].view(torch.int16), expected[~nan].view(torch.int16))


@pytest.mark.parametrize("state_dtype", [None, BF16_STATE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lion_is_the_torch_backends_lion_bit_for_bit(dtype, state_dtype):
    """The reference rounds each statement on its own, so in the same math dtype the kernel
    gives its bits, the sign's corner cases included: an exact 0 (zero grad on zero momentum:
    the param moves by the decay alone) and a NaN grad (the sign, the param and the momentum
    turn NaN)."""
    params = _small(dtype, n=3)
    hp = dict(hyperparameters("Lion-wd"), lr=0.01)
    runs = [Run("Lion-wd", [p.clone() for p in params], state_dtype, hp=hp) for _ in range(2)]
    runs[1].ops = ORACLE  # the torch backend in the same dtypes
    for k in (1, 2, 3):
        grads = make_grads(params, k)
        grads[0].zero_()  # step 1: m = 0, g = 0, sign 0
        grads[2][1] = float("nan")
        for run in runs:
            run.step([g.clone() for g in grads])
    for name, tensors in runs[0].tensors().items():
        for i, (a, b) in enumerate(zip(tensors, runs[1].tensors()[name])):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=f"{name}[{i}]")


def _storage_mode_cases():
    return [(case, mode) for case in ONE_PER_OPERATION if _operations(case) != ADAI_PASSES
            for mode in ("master_weights", "param_remainders", "stochastic_rounding")]


@pytest.mark.parametrize("case,option", _storage_mode_cases())
def test_param_storage_modes_are_the_fp32_step_then_the_rounding(case, option):
    """Each storage mode of bf16 params, in the shared walk: the kernel's fp32 value is the one
    it computes on fp32 params (the master, or the param joined with its remainder; for
    stochastic rounding the param itself), and the param is that value rounded as
    optimizers/_mixed_precision.py rounds it."""
    from fused_optim import _param_storage
    from fused_optim.optimizers import _mixed_precision as mp

    mode, seed = _param_storage.OPTION_MODES[option], 17
    start = [p.contiguous() for p in make_params(torch.float32)]
    if mode == _param_storage.REMAINDER:
        bf16, extras = map(list, zip(*[mp.split(x) for x in start]))
    else:
        bf16 = [mp.round_nearest(x, torch.bfloat16) for x in start]
        extras = [x.clone() for x in start] if mode == _param_storage.MASTER else None
    indices = [3 * i + 1 for i in range(len(start))] if mode == _param_storage.STOCHASTIC else None
    storage = _param_storage.ParamStorage(mode, extras, seed, indices)
    stored = Run(case, bf16)
    fp32 = Run(case, [x.clone() for x in start])
    for k in (1, 2, 3):
        if mode == _param_storage.STOCHASTIC:  # the fp32 step starts from the rounded param
            for x, p in zip(fp32.params, stored.params):
                x.copy_(p)
        grads = [g.bfloat16() for g in make_grads(start, k)]
        fp32.step([g.float() for g in grads])
        stored.step(grads, storage=storage)
        for i, (x, p) in enumerate(zip(fp32.params, stored.params)):
            if mode == _param_storage.MASTER:
                assert torch.equal(extras[i], x), f"step {k}: master {i}"
                assert torch.equal(p, mp.round_nearest(x, torch.bfloat16)), f"step {k}: param {i}"
            elif mode == _param_storage.REMAINDER:
                assert torch.equal(mp.join(p, extras[i]), x), f"step {k}: param and remainder {i}"
            else:
                t = torch.tensor(float(k))  # the step this update took
                assert torch.equal(p, mp.round_stochastic(x, seed, t, indices[i])), f"step {k}: param {i}"


def test_every_kernel_variant_compiles_for_a_gpu():
    """tests/triton_device_compile.py compiles each kernel (every single-pass operation's by the
    convention, every storage mode, norm kind and dtype the backend launches) for sm_90 without
    a GPU: the interpreter accepts code the device compiler may reject, and contracts nothing.
    Runs in a subprocess without TRITON_INTERPRET."""
    proc = _device_compile()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all kernels compiled for sm_90" in proc.stdout
    for name in operations.implementations("triton"):
        if name.endswith("_step"):
            assert f"{name} fp32 storage 0" in proc.stdout, name


def _device_compile():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, str(root / "tests" / "triton_device_compile.py")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_triton_older_than_3_2_leaves_the_backend_unavailable_and_says_why():
    """torch 2.4 and 2.5 pin triton 3.0 and 3.1, under which the kernels are not checked (3.0's
    interpreter gave wrong Adai sums): the backend is then unavailable, with the reason."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch, triton\n"
            "triton.__version__ = '3.1.0'\n"
            "import fused_optim\n"
            "print(fused_optim.availability('triton'))\n"
            "try:\n"
            "    fused_optim.AdamW([torch.nn.Parameter(torch.zeros(3))], backend='triton')\n"
            "except Exception as error:\n"
            "    print(type(error).__name__, error)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    why = "fused_optim's Triton kernels need triton >= 3.2, this is triton 3.1.0"
    assert proc.stdout.splitlines() == [str((False, why)), f"BackendUnavailable backend='triton' cannot serve: {why}"]
