"""A step is all or nothing per param: an error before the first kernel (bad input, out of
memory making states) changes nothing; an error between batches leaves every param either
stepped with its counter or untouched; a Ctrl-C during the writes arrives after a complete
step. Params that share memory and state dicts the step cannot use are refused up front."""
import signal

import pytest
import torch

import fused_optim
from fused_optim import backends
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, assert_unchanged, grads_for, make_params, set_grads, snapshot

BACKENDS = [b for b in CPU_BACKENDS if b != "triton"]  # the Python layer is what is tested
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # (torch < 2.5)


def _update_function(name):
    """The operation whose second call (group 2's batch) fails in the tests below: the one a
    one-pass optimizer runs, Adai's update pass."""
    return OPTIMIZERS[name].cls.operation or "adai_update"


def _two_groups(name, backend, seed=0):
    params = make_params("4097", torch.float32, seed=seed) + make_params("7", torch.float32, seed=seed + 1)
    spec = OPTIMIZERS[name]
    opt = spec.cls([{"params": params[:1]}, {"params": params[1:], "lr": 2e-3 if name not in ("Adai", "AdaiW")
                                             else 0.25}], **spec.cases["default"], backend=backend)
    return opt, params


def _fail_on_call(monkeypatch, backend, function, call, action):
    """Makes the `call`-th call of a backend function run `action` (after the real call when
    action says so)."""
    module = backends.implementation(backend)
    real = getattr(module, function)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            return action(real, args, kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, function, wrapper)


def _raise_before(real, args, kwargs):
    raise RuntimeError("injected device fault")


def _assert_states_equal(opt, reference, params, twins):
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == reference.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, reference.state[q][key]), key
    assert getattr(opt, "global_step", None) == getattr(reference, "global_step", None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_an_error_in_the_second_batch_leaves_the_first_stepped_with_its_counters(name, backend, monkeypatch):
    """The failed step equals a step in which group 2 had no grads; the next steps continue
    from there exactly as that run does (bias corrections included)."""
    opt, params = _two_groups(name, backend)
    reference, twins = _two_groups(name, backend)
    set_grads(params, grads_for(params, 1))
    with monkeypatch.context() as patch:
        _fail_on_call(patch, backend, _update_function(name), 2, _raise_before)
        with pytest.raises(RuntimeError, match="injected"):
            opt.step()
    grads = grads_for(twins, 1)
    # Adai's mean ran over both groups in the failed step: group 1 took the update it would
    # have taken in the full step, so the reference takes the full step for group 1 by
    # stepping both groups and putting group 2 back
    if name in ("Adai", "AdaiW"):
        keep = [t.detach().clone() for t in twins[1:]]
        set_grads(twins, grads)
        reference.step()
        with torch.no_grad():
            for t, k in zip(twins[1:], keep):
                t.copy_(k)
                reference.state.pop(t)
    else:
        set_grads(twins[:1], grads[:1])
        for t in twins[1:]:
            t.grad = None
        reference.step()
    _assert_states_equal(opt, reference, params, twins)
    for step in (2, 3):
        set_grads(params, grads_for(params, step))
        set_grads(twins, grads_for(twins, step))
        opt.step()
        reference.step()
    _assert_states_equal(opt, reference, params, twins)


def _interrupt_after(real, args, kwargs):
    """Ctrl-C arriving while the kernel runs: the handler runs at the next bytecode, after it."""
    real(*args, **kwargs)
    signal.raise_signal(signal.SIGINT)


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test: a process started in the background by a
    shell without job control (nohup cmd &) inherits SIGINT ignored, and an ignored Ctrl-C is
    rightly not delivered after the step either."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("call", [1, 2])
def test_a_ctrl_c_during_the_step_arrives_after_a_complete_step(name, backend, call, monkeypatch, default_sigint):
    opt, params = _two_groups(name, backend)
    reference, twins = _two_groups(name, backend)
    for step in (1, 2):
        set_grads(params, grads_for(params, step))
        set_grads(twins, grads_for(twins, step))
        reference.step()
        if step == 1:
            opt.step()
            continue
        with monkeypatch.context() as patch:
            _fail_on_call(patch, backend, _update_function(name), call, _interrupt_after)
            with pytest.raises(KeyboardInterrupt):
                opt.step()
    _assert_states_equal(opt, reference, params, twins)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_out_of_memory_making_the_second_groups_states_changes_nothing(name, backend, monkeypatch):
    opt, params = _two_groups(name, backend)
    set_grads(params, grads_for(params, 1))
    before = snapshot(opt)
    real_full_like = torch.full_like
    made = []

    def full_like(*args, **kwargs):
        made.append(1)
        if len(made) > len(opt.state_layout(opt.hyper(opt.param_groups[0], 0))):  # past group 1's states
            raise OutOfMemoryError("injected: out of memory")
        return real_full_like(*args, **kwargs)

    monkeypatch.setattr(torch, "full_like", full_like)
    with pytest.raises(OutOfMemoryError):
        opt.step()
    monkeypatch.undo()
    assert_unchanged(opt, before)
    assert not opt.state


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_out_of_memory_staging_a_strided_param_changes_nothing(name, monkeypatch):
    """The native kernels need a dense layout: a strided view's param gets contiguous copies,
    made before the first kernel runs (an error there used to follow group 1's update)."""
    if not backends.availability("cpu")[0]:
        pytest.skip("needs the native cpu module")
    spec = OPTIMIZERS[name]
    dense = make_params("4097", torch.float32)
    strided = (torch.randn(16, 24, generator=torch.Generator().manual_seed(3)) * 0.05)[:, ::3].requires_grad_()
    opt = spec.cls([{"params": dense}, {"params": [strided]}], **spec.cases["default"], backend="cpu")
    for step in (1, 2):
        set_grads(dense + [strided], grads_for(dense + [strided], step))
        if step == 1:
            opt.step()
    before = snapshot(opt)
    real = torch.Tensor.contiguous

    def contiguous(self, *args, **kwargs):
        if not self.is_contiguous():
            raise OutOfMemoryError("injected: out of memory")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "contiguous", contiguous)
    with pytest.raises(OutOfMemoryError):
        opt.step()
    monkeypatch.undo()
    assert_unchanged(opt, before)


# ----- memory shared between params ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_params_that_overlap_themselves_or_each_other_are_refused(name):
    spec = OPTIMIZERS[name]
    expanded = torch.zeros(1, 8).expand(4, 8).requires_grad_()
    with pytest.raises(ValueError, match="share memory"):
        spec.cls([expanded], **spec.cases["default"])
    base = torch.zeros(20)
    first, second = torch.nn.Parameter(base[:12]), torch.nn.Parameter(base[8:])
    with pytest.raises(ValueError, match="share memory"):
        spec.cls([first, second], **spec.cases["default"])
    opt = spec.cls([first], **spec.cases["default"])
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [second]})
    assert len(opt.param_groups) == 1
    twice = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="listed twice"):
        spec.cls([twice, twice], **spec.cases["default"])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_disjoint_views_of_one_buffer_step_like_separate_tensors(name):
    """A flat buffer cut into params (FSDP's flat params, a fused QKV weight split): allowed,
    and each view steps exactly as a tensor of its own."""
    spec = OPTIMIZERS[name]
    flat = torch.randn(4 * 33 + 5, generator=torch.Generator().manual_seed(0)) * 0.05
    views = [torch.nn.Parameter(flat[:132].view(4, 33)), torch.nn.Parameter(flat[132:])]
    separate = [torch.nn.Parameter(v.detach().clone()) for v in views]
    opt, ref = spec.cls(views, **spec.cases["default"]), spec.cls(separate, **spec.cases["default"])
    for step in (1, 2, 3):
        set_grads(views, grads_for(views, step))
        set_grads(separate, grads_for(separate, step))
        opt.step()
        ref.step()
    for v, s in zip(views, separate):
        assert torch.equal(v, s)


# ----- state dicts the step could not use ------------------------------------------------------

def _bad_state_dicts(name):
    opt, params = _two_groups(name, "torch")
    set_grads(params, grads_for(params, 1))
    opt.step()
    good = opt.state_dict()
    first = next(iter(good["state"]))
    cases = {}
    if OPTIMIZERS[name].cls.per_param_step:
        for label, step in (("string step", "abc"), ("3-element step", torch.ones(3)), ("negative step", -5),
                            ("fractional step", 2.5), ("NaN step", float("nan"))):
            bad = _copy(good)
            bad["state"][first]["step"] = step
            cases[label] = bad
    else:
        for label, step in (("string global_step", "abc"), ("negative global_step", -5)):
            bad = _copy(good)
            bad["global_step"] = step
            cases[label] = bad
    bad = _copy(good)
    bad["state"][first]["exp_avg"] = [0.0] * 4097
    cases["list moment"] = bad
    bad = _copy(good)
    bad["state"][first][OPTIMIZERS[name].state_names[-1]] = torch.zeros(4097, dtype=torch.int32)
    cases["integer moment"] = bad
    return cases


def _copy(state_dict):
    return {**state_dict, "state": {k: dict(v) for k, v in state_dict["state"].items()}}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_state_dict_the_step_cannot_use_is_refused_before_anything_is_replaced(name):
    for label, bad in _bad_state_dicts(name).items():
        opt, params = _two_groups(name, "cpu" if backends.availability("cpu")[0] else "torch", seed=5)
        set_grads(params, grads_for(params, 1))
        opt.step()
        before = snapshot(opt)
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)
        assert_unchanged(opt, before)
        set_grads(params, grads_for(params, 2))
        opt.step()  # and the optimizer still steps
        assert all(torch.isfinite(p).all() for p in params), label


def test_fused_optim_exposes_its_classes():
    assert fused_optim.AdamW is OPTIMIZERS["AdamW"].cls
