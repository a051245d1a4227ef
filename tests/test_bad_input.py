"""Bad input raises a clear error before any param or state is modified."""
import math

import pytest
import torch

import fused_optim
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, assert_unchanged, grads_for, make_params, set_grads, snapshot

BACKENDS = CPU_BACKENDS
NAMES = list(OPTIMIZERS)


def _started(name, backend, layout="4097"):
    """An optimizer after two good steps, so there is state to protect."""
    spec = OPTIMIZERS[name]
    params = make_params(layout, torch.float32) + make_params("7", torch.float32, seed=5)
    opt = spec.cls(params, **spec.cases["default"], backend=backend)
    for step in (1, 2):
        set_grads(params, grads_for(params, step))
        opt.step()
    set_grads(params, grads_for(params, 3))
    return opt, params


def _expect_untouched(opt, error, match):
    before = snapshot(opt)
    with pytest.raises(error, match=match):
        opt.step()
    assert_unchanged(opt, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_sparse_grad(name, backend):
    opt, params = _started(name, backend)
    params[-1].grad = params[-1].grad.to_sparse()
    _expect_untouched(opt, RuntimeError, "sparse")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "field,value,match",
    [("lr", math.nan, "lr"), ("lr", -1.0, "lr"), ("eps", math.inf, "eps"), ("weight_decay", -0.1, "weight_decay"),
     ("betas", (0.9, 1.0), "betas"), ("betas", (math.nan, 0.9), "betas"), ("betas", 0.9, "betas")],
)
def test_bad_hyperparameter_at_step(name, backend, field, value, match):
    opt, _ = _started(name, backend)
    if field not in opt.param_groups[0]:
        pytest.skip(f"{name} has no {field}")
    opt.param_groups[0][field] = value  # as a buggy schedule would
    _expect_untouched(opt, ValueError, match)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_grad_of_wrong_dtype_or_shape(name, backend):
    opt, params = _started(name, backend)
    # torch refuses to assign such grads; .data is how they arrive from hand-written code
    params[0].grad.data = params[0].grad.data.double()
    _expect_untouched(opt, ValueError, "dtype")
    params[0].grad.data = torch.zeros(3)
    _expect_untouched(opt, ValueError, "shape")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameter_in_a_later_group_leaves_earlier_groups_untouched(name, backend):
    spec = OPTIMIZERS[name]
    first, second = make_params("7", torch.float32), make_params("7", torch.float32, seed=2)
    opt = spec.cls([{"params": first}, {"params": second}], **spec.cases["default"], backend=backend)
    set_grads(first + second, grads_for(first + second, 1))
    opt.param_groups[1]["lr"] = math.nan
    _expect_untouched(opt, ValueError, "param group 1")


@pytest.mark.parametrize("name", NAMES)
def test_bad_construction(name):
    spec = OPTIMIZERS[name]
    kwargs = dict(spec.cases["default"])
    good = make_params("7", torch.float32)
    with pytest.raises(ValueError, match="lr"):
        spec.cls(good, **{**kwargs, "lr": math.nan})
    with pytest.raises(ValueError, match="complex"):
        spec.cls([torch.zeros(3, dtype=torch.complex64, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match="dtype"):
        spec.cls([torch.nn.Parameter(torch.zeros(3, dtype=torch.float8_e4m3fn))], **kwargs)
    with pytest.raises(ValueError, match="one device"):
        spec.cls(good + [torch.zeros(3, device="meta", requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match="backend"):
        spec.cls(good, **kwargs, backend="gpu")


def test_adding_a_bad_group_leaves_the_optimizer_as_it_was():
    opt = fused_optim.Adam(make_params("7", torch.float32))
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": make_params("7", torch.float32, seed=9), "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_explicit_backend_that_cannot_serve_says_why():
    with pytest.raises(fused_optim.BackendUnavailable, match="cuda"):
        fused_optim.Adam(make_params("7", torch.float32), backend="cuda")
    with pytest.raises(fused_optim.BackendUnavailable, match="cpu backend updates CPU tensors only"):
        fused_optim.Adam([torch.zeros(3, device="meta", requires_grad=True)], backend="cpu")


def test_adai_rejects_eps_zero():
    # eps bounds beta1 <= 1 - eps; with 0, 1 - beta1_prod can reach 0 and give 0/0
    with pytest.raises(ValueError, match="eps"):
        fused_optim.Adai(make_params("7", torch.float32), lr=0.1, eps=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_state_that_no_longer_fits_its_param(name, backend):
    """A param converted after its state was made (model.double() mid-run) is refused before
    anything changes: the native kernels would otherwise read state memory of the wrong size."""
    opt, params = _started(name, backend)
    with torch.no_grad():
        params[0].data = params[0].data.double()
    params[0].grad = params[0].grad.double()
    _expect_untouched(opt, ValueError, "does not fit")
