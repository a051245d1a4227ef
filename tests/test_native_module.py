"""fused_optim._cpu checks its raw arguments and raises ValueError instead of touching
memory it was not given; its operations and codes are the ones fused_optim declares."""
import pytest
import torch

import fused_optim
from fused_optim import _param_storage, dtypes, operations

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")

ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
            maximize=False)


def _adam(lists, numels, steps=(1.0,), dtype=0, threads=1, **hyper):
    from fused_optim import _cpu

    call = _cpu.Call(lists=lists, numels=list(numels), steps=list(steps), dtype=dtype, num_threads=threads)
    return _cpu.step("adam_step", call, {**ADAM, **hyper})


def _tensors(n=8, dtype=torch.float32):
    return [torch.zeros(n, dtype=dtype) for _ in range(4)]


def _lists(*tensors):
    """adam_step's lists: param, grad, exp_avg, exp_avg_sq, and max_exp_avg_sq, which a call
    without amsgrad leaves empty."""
    return [[t.data_ptr()] for t in tensors] + [[]]


def test_valid_call_updates():
    p, g, m, v = _tensors()
    g.fill_(1.0)
    assert _adam(_lists(p, g, m, v), [8]) == []
    assert torch.all(p < 0)


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a[:3], "expected 5 tensor lists"),
    (lambda a: [a[0] + a[0]] + a[1:], "entries"),
    (lambda a: [[0]] + a[1:], "null address"),
    (lambda a: [[a[0][0] + 2]] + a[1:], "not aligned"),
])
def test_bad_address_lists(mutate, match):
    p, g, m, v = _tensors()
    before = p.clone()
    with pytest.raises(ValueError, match=match):
        _adam(mutate(_lists(p, g, m, v)), [8])
    assert torch.equal(p, before)


def test_bad_scalars():
    p, g, m, v = _tensors()
    lists = _lists(p, g, m, v)
    with pytest.raises(ValueError, match="dtype code"):
        _adam(lists, [8], dtype=7)
    with pytest.raises(ValueError, match="steps"):
        _adam(lists, [8], steps=(1.0, 2.0))
    with pytest.raises(ValueError, match="step count"):
        _adam(lists, [8], steps=(-1.0,))
    with pytest.raises(ValueError, match="num_threads"):
        _adam(lists, [8], threads=0)
    with pytest.raises(ValueError, match="negative numel"):
        _adam(lists, [-1])
    with pytest.raises(ValueError, match="fused_optim._cpu.adam_step: lr is not finite"):
        _adam(lists, [8], lr=float("nan"))


def test_hyperparameters_are_checked_by_name():
    """One generic unpacking for every operation: each declared hyperparameter once, flags 0/1."""
    p, g, m, v = _tensors()
    lists = _lists(p, g, m, v)
    with pytest.raises(ValueError, match="missing hyperparameter maximize"):
        _adam_without(lists, "maximize")
    with pytest.raises(ValueError, match="unknown hyperparameter rectify"):
        _adam(lists, [8], rectify=True)
    with pytest.raises(ValueError, match="amsgrad is a flag"):
        _adam(lists, [8], amsgrad=2)
    with pytest.raises(ValueError, match="not a number"):
        _adam(lists, [8], lr="fast")
    with pytest.raises(ValueError, match="no operation nadam_step"):
        from fused_optim import _cpu

        _cpu.step("nadam_step", _cpu.Call(), {})
    with pytest.raises(TypeError, match="unexpected keyword argument 'param_mode'"):
        from fused_optim import _cpu

        _cpu.Call(param_mode=1)


def _adam_without(lists, name):
    from fused_optim import _cpu

    hyper = {k: v for k, v in ADAM.items() if k != name}
    return _cpu.step("adam_step", _cpu.Call(lists=lists, numels=[8], steps=[1.0]), hyper)


def test_param_storage_is_checked():
    from fused_optim import _cpu

    p, g, m, v = _tensors()
    lists = _lists(p, g, m, v)
    with pytest.raises(ValueError, match="unknown param storage mode 7"):
        _cpu.step("adam_step", _cpu.Call(lists=lists, numels=[8], steps=[1.0], storage_mode=7), ADAM)
    with pytest.raises(ValueError, match="param storage mode 1 does not serve float32 params"):
        _cpu.step("adam_step", _cpu.Call(lists=lists, numels=[8], steps=[1.0], storage_mode=1), ADAM)
    bf16 = [[t.to(torch.bfloat16).data_ptr()] for t in (p, g)] + lists[2:]
    with pytest.raises(ValueError, match="tensor_indices has 0 entries for 1 tensors"):
        _cpu.step("adam_step", _cpu.Call(lists=bf16, numels=[8], steps=[1.0], dtype=2, storage_mode=3), ADAM)
    with pytest.raises(ValueError, match=r"expected 6 tensor lists \(the last: masters or remainders\)"):
        _cpu.step("adam_step", _cpu.Call(lists=bf16, numels=[8], steps=[1.0], dtype=2, storage_mode=1), ADAM)


def test_a_state_the_flags_leave_out_may_be_absent_or_given():
    """max_exp_avg_sq keeps its place in adam_step's lists: without amsgrad it may be empty or
    given (and is neither read nor written), with amsgrad it must be there."""
    results = []
    for given in (False, True):
        p, g, m, v = _tensors()
        g.fill_(1.0)
        vmax = torch.full((8,), 7.0)
        lists = _lists(p, g, m, v)
        if given:
            lists[4] = [vmax.data_ptr()]
        _adam(lists, [8])
        assert torch.equal(vmax, torch.full((8,), 7.0))
        results.append(p)
    assert torch.equal(*results)
    with pytest.raises(ValueError, match="tensor list 4 has 0 entries for 1 tensors"):
        _adam(_lists(p, g, m, v), [8], amsgrad=True)


def test_states_are_the_math_dtype():
    p, g, m, v = _tensors()
    with pytest.raises(ValueError, match="states of float32 params must be float32, got bfloat16"):
        from fused_optim import _cpu

        call = _cpu.Call(lists=_lists(p, g, m, v), numels=[8], steps=[1.0], state_dtype=2)
        _cpu.step("adam_step", call, ADAM)


def test_operations_are_the_declared_ones():
    """Every native operation is declared in fused_optim.operations, with the declaration's
    hyperparameters in its order; every single-pass declaration has one (Adai's three too)."""
    from fused_optim import _cpu

    native = _cpu.operations()
    assert set(native) == set(operations.OPERATIONS)
    for name, fields in native.items():
        assert tuple(fields) == operations.OPERATIONS[name].hyperparameters, name


def test_codes_are_the_python_ones():
    """The param storage codes (math/rounding.h) and dtype codes (dtypes.h) are the ones of
    fused_optim._param_storage and fused_optim.dtypes."""
    from fused_optim import _cpu

    python = {name: getattr(_param_storage, name) for name in ("PLAIN", "MASTER", "REMAINDER", "STOCHASTIC")}
    assert _cpu.storage_modes() == python
    assert _cpu.dtype_codes() == {str(d).replace("torch.", ""): code for d, code in dtypes.NATIVE_CODES.items()}
    assert _cpu.device_type == "cpu"


def test_lion_step_matches_its_formula():
    """sign(beta1 m + (1 - beta1) g), weight decay, and the new m, in fp32 as torch computes
    them; sign(0) = 0, and sign(NaN) = NaN as in fused_optim.reference.lion_step."""
    from fused_optim import _cpu

    p = torch.tensor([1.0, 1.0, 1.0, -2.0, 0.5, 3.0])
    g = torch.tensor([0.5, -0.5, 0.0, 1.0, float("nan"), 0.0])
    m = torch.tensor([0.0, 0.0, 0.0, -1.0, 0.0, 0.0])
    want_p, want_m = p.clone(), m.clone()
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.5)
    c = want_m * 0.9 + g * (1 - 0.9)
    update = torch.where(torch.isnan(c), c, c.sign())
    want_p = want_p * (1 - 0.1 * 0.5) - 0.1 * update
    want_m = want_m * 0.99 + g * (1 - 0.99)
    call = _cpu.Call(lists=[[t.data_ptr()] for t in (p, g, m)], numels=[6], steps=[0.0], dtype=0)
    assert _cpu.step("lion_step", call, hyper) == []
    torch.testing.assert_close(p, want_p, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(m, want_m, equal_nan=True, rtol=0, atol=0)
    assert p[4].isnan() and not p[5].isnan()  # a NaN grad shows in its param


def test_adai_stores_subnormal_beta1_prod_as_zero_and_leaves_the_callers_mode():
    """The Adai update pass stores a beta1_prod below the smallest normal float as 0 (x86
    multiplies subnormals slowly; csrc/cpu/adai.cpp); the caller keeps its floating-point
    mode, subnormals included."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert float(tiny * 1.0) != 0.0  # this thread keeps denormals
    p = torch.zeros(1000, requires_grad=True)
    opt = fused_optim.Adai([p], lr=0.1, backend="cpu")
    p.grad = torch.ones(1000)
    opt.step()
    opt.state[p]["beta1_prod"].fill_(1e-39)  # subnormal: stored as 0 by the next update
    opt.step()
    assert torch.equal(opt.state[p]["beta1_prod"], torch.zeros(1000))
    assert float(tiny * 1.0) != 0.0
