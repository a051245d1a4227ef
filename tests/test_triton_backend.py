"""The triton backend (fused_optim.triton_backend) against the fp64 reference, and its
contract: GradScaler inputs, device-read steps, deterministic Adai sums, one launch per call
from a cached pointer table, no recompilation for new hyperparameters, custom ops.

Without a CUDA device the kernels run under the Triton interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton). On a GPU machine
the same tests run on CUDA tensors. Sizes are small: the interpreter runs each block in numpy.
"""
import importlib

import math

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the triton backend cannot run")

from fused_optim import reference  # noqa: E402

from .helpers import needs_compiled_step  # noqa: E402
from .tolerances import param_tolerance, state_tolerance  # noqa: E402

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


# Function-level hyperparameters of the optimizer cases in fused_optim/registry.py.
ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
            maximize=False)
ADAMOMENTUM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-16, weight_decay=0.0, decoupled=True,
                   amsgrad=False, rectify=False)
DUALADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, switch_rate=0.01)
ADAI = dict(lr=0.5, beta0=0.1, beta2=0.99, eps=1e-3, weight_decay=0.0, decoupled=False)

CASES = {
    # name: (function, tolerance name in tests/tolerances.py, hyperparameters)
    "adam": ("adam", "Adam", ADAM),
    "adam_l2": ("adam", "Adam", dict(ADAM, weight_decay=0.1)),
    "adam_amsgrad": ("adam", "Adam", dict(ADAM, amsgrad=True, weight_decay=0.05)),
    "adam_maximize": ("adam", "Adam", dict(ADAM, maximize=True, beta1=0.8, beta2=0.99, eps=1e-6)),
    "adamw": ("adam", "AdamW", dict(ADAM, decoupled=True, weight_decay=0.01)),
    "adamw_amsgrad_maximize": ("adam", "AdamW", dict(ADAM, decoupled=True, amsgrad=True, maximize=True,
                                                     weight_decay=0.1)),
    "adamomentum": ("adamomentum", "AdaMomentum", ADAMOMENTUM),
    "adamomentum_l2": ("adamomentum", "AdaMomentum", dict(ADAMOMENTUM, decoupled=False, weight_decay=0.05)),
    "adamomentum_decoupled_wd": ("adamomentum", "AdaMomentum", dict(ADAMOMENTUM, weight_decay=0.05)),
    "adamomentum_amsgrad": ("adamomentum", "AdaMomentum", dict(ADAMOMENTUM, amsgrad=True)),
    # beta2 = 0.9: rho_t crosses 5 at step 6, both rectify regimes happen
    "adamomentum_rectify": ("adamomentum", "AdaMomentum", dict(ADAMOMENTUM, rectify=True, beta2=0.9, eps=1e-8)),
    "adamomentum_rectify_amsgrad": ("adamomentum", "AdaMomentum", dict(ADAMOMENTUM, rectify=True, amsgrad=True,
                                                                       beta1=0.8, beta2=0.9, eps=1e-8)),
    "dualadam": ("dualadam", "DualAdam", DUALADAM),
    # 0.3: blending at steps 1-2, pure Adam from step 3
    "dualadam_fast_switch": ("dualadam", "DualAdam", dict(DUALADAM, switch_rate=0.3)),
    "dualadam_wd": ("dualadam", "DualAdam", dict(DUALADAM, switch_rate=0.2, weight_decay=0.05)),
    "invadam": ("dualadam", "InvAdam", dict(DUALADAM, switch_rate=0.0)),
    "invadam_wd": ("dualadam", "InvAdam", dict(DUALADAM, switch_rate=0.0, weight_decay=0.05, eps=1e-3)),
    "adai": ("adai", "Adai", ADAI),
    "adai_l2": ("adai", "Adai", dict(ADAI, weight_decay=0.05)),
    "adai_decoupled": ("adai", "AdaiW", dict(ADAI, weight_decay=0.05, decoupled=True)),
    "adai_betas_eps": ("adai", "Adai", dict(ADAI, lr=0.1, beta0=0.3, beta2=0.9, eps=0.05)),
}

STATE_NAMES = {
    "adam": ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    "adamomentum": ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"),
    "dualadam": ("exp_avgs", "exp_avg_sqs"),
    "adai": ("exp_avgs", "exp_avg_sqs", "beta1_prods"),
}


class Run:
    """Params and states of one optimizer function's group, stepped by the triton backend
    (state dtype `state_dtype`, step counters as 0-dim float32 tensors) or, with oracle=True,
    by fused_optim.reference in fp64 (steps as floats t = step + 1)."""

    def __init__(self, fn, hp, params, state_dtype=None, oracle=False):
        self.fn, self.hp, self.oracle = fn, dict(hp), oracle
        self.params = [p.detach().double().clone() if oracle else p for p in params]
        if oracle:
            state_dtype = torch.float64
        elif state_dtype is None:
            state_dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        zeros = lambda: [torch.zeros_like(p, dtype=state_dtype) for p in self.params]  # noqa: E731
        self.states = {name: zeros() for name in STATE_NAMES[fn]}
        if fn == "adai":
            # bf16 cannot hold beta1_prod in (1 - 2^-9, 1): beta1 = 0.999 would round it to 1 and
            # divide by 1 - beta1_prod = 0. With bf16 moments it stays fp32 (the kernel takes
            # its dtype separately).
            prod_dtype = torch.float32 if state_dtype == BF16_STATE else state_dtype
            self.states["beta1_prods"] = [torch.ones_like(p, dtype=prod_dtype) for p in self.params]
        self.count = 0  # steps taken (the optimizer's step counters hold this before a step)
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in self.params]
        self.global_step = torch.zeros((), dtype=torch.float64)

    def step(self, grads, **scaling):
        s, hp = self.states, self.hp
        if self.oracle:
            grads = [g.double() for g in grads]
            t = [self.count + 1.0] * len(self.params)
        impl = reference if self.oracle else tb
        steps = t if self.oracle else self.steps
        if self.fn == "adam":
            impl.adam_step(self.params, grads, s["exp_avgs"], s["exp_avg_sqs"], s["max_exp_avg_sqs"], steps,
                           **hp, **scaling)
        elif self.fn == "adamomentum":
            impl.adamomentum_step(self.params, grads, s["exp_avgs"], s["exp_avg_sqs"], s["max_exp_avg_sqs"],
                                  steps, **hp, **scaling)
        elif self.fn == "dualadam":
            global_step = self.count + 1 if self.oracle else self.global_step
            impl.dualadam_step(self.params, grads, s["exp_avgs"], s["exp_avg_sqs"], global_step=global_step,
                               **hp, **scaling)
        else:
            pass1 = {k: hp[k] for k in ("beta2", "weight_decay", "decoupled")}
            if "grad_scale" in scaling:
                pass1["grad_scale"] = scaling["grad_scale"]
            total = impl.adai_second_moment(self.params, grads, s["exp_avg_sqs"], steps, **pass1)
            count = sum(p.numel() for p in self.params)
            self.last_total = total
            impl.adai_update(self.params, grads, s["exp_avgs"], s["exp_avg_sqs"], s["beta1_prods"], steps, **hp,
                             vbar=total / count, **scaling)
        found_inf = scaling.get("found_inf")
        if found_inf is None or float(found_inf) == 0:
            # the optimizer advances the counters after every call succeeded
            self.count += 1
            for step in self.steps:
                step.add_(1)
            self.global_step.add_(1)

    def tensors(self):
        """name -> list of tensors, params and every state."""
        out = {"params": self.params}
        for name, tensors in self.states.items():
            if name != "max_exp_avg_sqs" or self.hp.get("amsgrad"):
                out[name] = tensors
        return out


def run_pair(case, dtype, state_dtype=None, steps=4, seed=0):
    fn, _, hp = CASES[case]
    params = make_params(dtype, seed)
    run, oracle = Run(fn, hp, params, state_dtype), Run(fn, hp, params, oracle=True)
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
    fn, tol_name, hp = CASES[case]
    dtype = run.params[0].dtype
    bf16_states = run.states["exp_avgs"][0].dtype == BF16_STATE
    expected, actual = oracle.tensors(), run.tensors()
    for i, (p, q) in enumerate(zip(actual["params"], expected["params"])):
        rtol, atol = param_tolerance(tol_name, dtype, q)
        if bf16_states and q.numel():
            moved = float((q - initial[i].double()).abs().max())
            rtol, atol = max(rtol, BF16_STATE_RTOL), max(atol, 2 ** -5 * moved)
        _close(p, q, rtol, atol, f"{case} {dtype} param {i}")
        for name in expected:
            if name == "params":
                continue
            s, r = actual[name][i], expected[name][i]
            srtol, satol = state_tolerance(tol_name, dtype, hp.get("weight_decay", 0.0), atol)
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
# Cases that run every dtype combination: one per function with weight decay (the states see
# p), plus the flags that change what memory a kernel touches (amsgrad) or its scalars.
DTYPE_CASES = ["adam_l2", "adamw_amsgrad_maximize", "adamomentum_rectify_amsgrad", "dualadam_wd", "adai_l2",
               "adai_decoupled"]


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


# ---------------------------------------------------------------------------------------------
# The contract beyond the math
# ---------------------------------------------------------------------------------------------

# one case per function, fp32, for the tests below
ONE_PER_FUNCTION = ["adam_amsgrad", "adamomentum_rectify", "dualadam_fast_switch", "adai_l2"]


def _snapshot(run):
    return {name: [t.clone() for t in tensors] for name, tensors in run.tensors().items()}


def _assert_bitwise_equal(a, b, what):
    for name in a:
        for i, (x, y) in enumerate(zip(a[name], b[name])):
            assert torch.equal(x, y), f"{what}: {name}[{i}] differs"


@pytest.mark.parametrize("case", ONE_PER_FUNCTION)
def test_found_inf_leaves_everything_unchanged(case):
    fn, _, hp = CASES[case]
    run = Run(fn, hp, make_params(torch.float32))
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
@pytest.mark.parametrize("case", ONE_PER_FUNCTION)
def test_grad_scale_equals_prescaled_grads(case, dtype):
    fn, _, hp = CASES[case]
    scale = torch.tensor(3.0, dtype=torch.float32, device=DEVICE)
    scaled, plain = Run(fn, hp, make_params(dtype)), Run(fn, hp, make_params(dtype))
    for k in (1, 2):
        grads = make_grads(scaled.params, k)
        scaled.step([g * scale.to(dtype) for g in grads], grad_scale=scale)
        plain.step([(g * scale.to(dtype)) / scale.to(dtype) for g in grads])
    _assert_bitwise_equal(_snapshot(plain), _snapshot(scaled), f"{case} grad_scale")


def test_adai_is_deterministic_and_its_sum_matches_the_reference():
    fn, _, hp = CASES["adai_l2"]
    runs = [Run(fn, hp, make_params(torch.float32)) for _ in range(2)]
    totals = [[], []]
    for k in (1, 2):
        for run, out in zip(runs, totals):
            run.step(make_grads(run.params, k))
            out.append(run.last_total.clone())
    _assert_bitwise_equal(_snapshot(runs[0]), _snapshot(runs[1]), "two Adai runs")
    for a, b in zip(*totals):
        assert a.dtype == torch.float64 and a.dim() == 0 and a.device == DEVICE
        assert torch.equal(a, b)
    # pass 1 alone: the sum of vhat_new without writing v
    oracle = Run(fn, hp, make_params(torch.float32), oracle=True)
    run = Run(fn, hp, make_params(torch.float32))
    grads = make_grads(run.params, 1)
    v_before = [v.clone() for v in run.states["exp_avg_sqs"]]
    total = tb.adai_second_moment(run.params, grads, run.states["exp_avg_sqs"], run.steps, beta2=hp["beta2"],
                                  weight_decay=hp["weight_decay"], decoupled=hp["decoupled"])
    expected = reference.adai_second_moment(oracle.params, [g.double() for g in grads], oracle.states["exp_avg_sqs"],
                                            [1.0] * len(grads), beta2=hp["beta2"], weight_decay=hp["weight_decay"],
                                            decoupled=hp["decoupled"])
    assert all(torch.equal(a, b) for a, b in zip(v_before, run.states["exp_avg_sqs"])), "pass 1 wrote v"
    torch.testing.assert_close(total.cpu(), expected, rtol=1e-6, atol=0)


def test_adai_all_zero_grads_give_finite_steps():
    """vbar == 0 at step 1 (every grad exactly zero): the ratio is 1 (OURS), nothing is NaN."""
    fn, _, hp = CASES["adai"]
    run, oracle = Run(fn, hp, make_params(torch.float32)), Run(fn, hp, make_params(torch.float32), oracle=True)
    zeros = [torch.zeros_like(p) for p in run.params]
    run.step(zeros)
    oracle.step(zeros)
    assert float(run.last_total) == 0.0
    for name, tensors in run.tensors().items():
        assert all(torch.isfinite(t).all() for t in tensors), name
    check_parity("adai", run, oracle, make_params(torch.float32))


@pytest.mark.parametrize("case", ["adam_l2", "adai_decoupled"])
def test_steps_read_by_the_kernel_equal_steps_read_on_the_host(case, monkeypatch):
    fn, _, hp = CASES[case]
    results = []
    for host in (False, True):
        monkeypatch.setattr(tb, "_FORCE_HOST_STEPS", host)
        run = Run(fn, hp, make_params(torch.float32))
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
        hp = dict(DUALADAM, switch_rate=0.05)
        params = make_params(torch.float64)
        run, oracle = Run("dualadam", hp, params), Run("dualadam", hp, params, oracle=True)
        run.global_step.fill_(t - 1)
        oracle.count = t - 1
        grads = make_grads(run.params, 1)
        run.step(grads)
        oracle.step(grads)
        check_parity("dualadam", run, oracle, params)


def test_pointer_table_is_cached_and_rebuilt_when_a_tensor_changes():
    fn, _, hp = CASES["adam_l2"]
    # no staged index here: staged copies are new tensors at new addresses every call
    params = [p.contiguous() if i == STAGED_INDEX else p for i, p in enumerate(make_params(torch.float32))]
    run, oracle = Run(fn, hp, params), Run(fn, hp, params, oracle=True)
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
    check_parity("adam_l2", run, oracle, params)


def test_300_tensors_in_one_launch():
    gen = torch.Generator().manual_seed(3)
    params = [_rnd(gen, i % 13 + 1, dtype=torch.float32).to(DEVICE) for i in range(320)]
    params[17] = params[17][:0]  # and a zero-size one among them
    fn, _, hp = CASES["adamw"]
    run, oracle = Run(fn, hp, params), Run(fn, hp, params, oracle=True)
    grads = [torch.randn(p.shape, generator=gen).to(DEVICE) * 0.1 for p in params]
    launches = mt.VARIANTS.launches
    run.step(grads)
    assert mt.VARIANTS.launches == launches + 1
    oracle.step(grads)
    check_parity("adamw", run, oracle, params)


def test_new_hyperparameters_compile_nothing():
    """lr, betas, eps, weight decay values are fp64 runtime arguments: stepping with new values
    adds no compile-cache key (computed as triton's JIT does; on a GPU also its real cache)."""
    params = make_params(torch.float32)
    kernels = {"adam": tb._adam.adam_kernel, "adai": tb._adai.adai_update_kernel}
    for fn, kernel in kernels.items():
        base = CASES["adam_l2" if fn == "adam" else "adai_l2"][2]
        run = Run(fn, base, params)
        run.step(make_grads(run.params, 1))
        name = kernel.fn.__name__
        variants = mt.VARIANTS.count(name)
        cached = _jit_cache_size(kernel)
        for k, (lr, b2) in enumerate([(0.3, 0.95), (1e-4, 0.9), (2e-2, 0.999)], start=2):
            run.hp.update(lr=lr, beta2=b2, eps=run.hp["eps"] * 2, weight_decay=run.hp["weight_decay"] * 3)
            run.step(make_grads(run.params, k))
        assert mt.VARIANTS.count(name) == variants, f"{name}: new hyperparameter values made a new variant"
        assert _jit_cache_size(kernel) == cached


def _jit_cache_size(kernel):
    """The JIT's compiled-kernel count on the current GPU; None under the interpreter, which
    compiles nothing (VariantLog stands in for it there)."""
    caches = getattr(kernel, "device_caches", None)
    if not ON_GPU or caches is None:
        return None
    return len(caches[torch.cuda.current_device()][0])


def test_zero_size_only_and_empty_lists():
    fn, _, hp = CASES["adam"]
    params = [torch.zeros(0, device=DEVICE), torch.zeros(0, 3, device=DEVICE)]
    run = Run(fn, hp, params)
    launches = mt.VARIANTS.launches
    run.step([torch.zeros_like(p) for p in params])
    assert mt.VARIANTS.launches == launches
    tb.adam_step([], [], [], [], [], [], **ADAM)
    total = tb.adai_second_moment([], [], [], [], beta2=0.99, weight_decay=0.0, decoupled=False)
    assert float(total) == 0.0


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(mt, "INTERPRETED", False)
    ok, why = tb.available()
    assert ok == ON_GPU and (ok or "CUDA" in why)
    p = torch.zeros(3)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        tb.adam_step([p], [p.clone()], [p.clone()], [p.clone()], [], [torch.zeros(())], **ADAM)


def _small(dtype=torch.float32, n=2):
    gen = torch.Generator().manual_seed(5)
    return [_rnd(gen, 3 + i, dtype=dtype).to(DEVICE) for i in range(n)]


def _opcheck_cases():
    p = _small()
    z = lambda: [torch.zeros_like(x) for x in p]  # noqa: E731
    g = [torch.randn_like(x) for x in p]
    steps = [torch.ones((), dtype=torch.float32, device=DEVICE) for _ in p]
    scalar = lambda v, dt=torch.float32: torch.tensor(v, dtype=dt, device=DEVICE)  # noqa: E731
    return {
        "adam": (tb._adam_op, (p, g, z(), z(), z(), steps, 1e-3, 0.9, 0.999, 1e-8, 0.1, True, True, False,
                               scalar(2.0), scalar(0.0))),
        "adamomentum": (tb._adamomentum_op, (p, g, z(), z(), [], steps, 1e-3, 0.9, 0.9, 1e-8, 0.0, True, False,
                                             True, None, None)),
        "dualadam": (tb._dualadam_op, (p, g, z(), z(), scalar(1.0, torch.float64), 1e-3, 0.9, 0.999, 1e-8, 0.05,
                                       0.3, None, None)),
        "adai_second_moment": (tb._adai_second_moment_op, (p, g, z(), steps, 0.99, 0.05, False, None)),
        "adai_update": (tb._adai_update_op, (p, g, z(), z(), [torch.ones_like(x) for x in p], steps, 0.5, 0.1,
                                             0.99, 1e-3, 0.0, False, scalar(0.01, torch.float64), None, None)),
        "adai_clip_sums": (tb._adai_clip_sums_op, (p, g, z(), steps, 0.99, 0.05, False, math.inf, scalar(2.0))),
    }


@needs_compiled_step
@pytest.mark.parametrize("name", ["adam", "adamomentum", "dualadam", "adai_second_moment", "adai_update",
                                  "adai_clip_sums"])
def test_custom_ops_pass_opcheck(name):
    op, args = _opcheck_cases()[name]
    torch.library.opcheck(op, args)


def test_step_counters_are_not_written_and_bad_dtypes_are_refused():
    fn, _, hp = CASES["adam"]
    run = Run(fn, hp, _small())
    before = [s.clone() for s in run.steps]
    s = run.states
    tb.adam_step(run.params, make_grads(run.params, 1), s["exp_avgs"], s["exp_avg_sqs"], [], run.steps, **ADAM)
    assert all(torch.equal(a, b) for a, b in zip(before, run.steps))
    mixed = [v.double() for v in s["exp_avg_sqs"]]
    with pytest.raises(TypeError, match="share one dtype"):
        tb.adam_step(run.params, make_grads(run.params, 1), s["exp_avgs"], mixed, [], run.steps, **ADAM)
    with pytest.raises(TypeError, match="params' dtype"):
        tb.adam_step(run.params, [g.half() for g in make_grads(run.params, 1)], s["exp_avgs"], s["exp_avg_sqs"],
                     [], run.steps, **ADAM)


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
        tb.adam_step([p], [g], [m], [v], [], [step], **dict(ADAM, beta1=0.0))
    expected = g.to(torch.bfloat16)
    nan = expected.isnan()
    assert torch.equal(m.isnan(), nan)
    assert torch.equal(m[~nan].view(torch.int16), expected[~nan].view(torch.int16))


def test_every_kernel_variant_compiles_for_a_gpu():
    """tests/triton_device_compile.py compiles each kernel (every param mode, norm kind and
    dtype the backend launches) for sm_90 without a GPU: the interpreter accepts code the
    device compiler may reject. Runs in a subprocess without TRITON_INTERPRET."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(root / "tests" / "triton_device_compile.py")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all kernels compiled for sm_90" in proc.stdout


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
