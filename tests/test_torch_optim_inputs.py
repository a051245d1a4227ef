"""torch's own optimizer test inputs for Adam and AdamW (torch.testing._internal.common_optimizers,
shipped in the torch wheel), every kwargs set including the implementation switches foreach,
fused and differentiable and the CUDA-only ones (capturable, tensor lr and betas), run against
torch.optim in fp64 on the CPU: each set either matches torch.optim or is refused with the
reason the README lists (REFUSED)."""
import pytest
import torch

import fused_optim

from .helpers import CPU_BACKENDS, SLOW_BACKENDS, STEPS, make_params, step_in_lockstep

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers",
                                        reason="torch's optimizer test inputs need expecttest (the test extra)")

_all_inputs = getattr(common_optimizers, "_get_optim_inputs_including_global_cliquey_kwargs", None)
if _all_inputs is None:
    pytest.skip(f"torch {torch.__version__} has no optimizer input matrix", allow_module_level=True)

OURS = {torch.optim.Adam: fused_optim.Adam, torch.optim.AdamW: fused_optim.AdamW}

# kwargs torch accepts and we refuse, with the message's key phrase (README: "Drop-in with torch.optim")
REFUSED = {"differentiable": "outside autograd"}


def _inputs():
    cases = []
    for info in common_optimizers.optim_db:
        if info.optim_cls not in OURS:
            continue
        # the "cuda" list is the superset: the CPU one plus capturable and tensor lr/betas
        for optim_input in _all_inputs("cuda", torch.float64, info):
            cases.append(pytest.param(info.optim_cls, optim_input.kwargs,
                                      id=f"{info.optim_cls.__name__}-{optim_input.desc}"))
    return cases


INPUTS = _inputs()


def test_every_input_set_is_collected():
    # 20 kwargs sets per class today (5 on every device, 5 more for CUDA), x (plain, foreach,
    # fused, differentiable): a torch release that drops them would make this file vacuous
    assert len(INPUTS) >= 60


def _as_float(value):
    """A tensor hyperparameter as the number we read from it. torch keeps fp32 tensor betas
    in fp32 for its bias corrections (1 - beta1**t rounded to fp32: ~1e-7 relative off in an
    fp64 run); we take the tensor's value into fp64 math, as for a float (README)."""
    if torch.is_tensor(value):
        return value.item()
    if isinstance(value, tuple):
        return tuple(_as_float(v) for v in value)
    return value


def _refusal(kwargs):
    return next((reason for key, reason in REFUSED.items() if kwargs.get(key)), None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("theirs,kwargs", INPUTS)
def test_torch_optimizer_inputs_match_or_are_refused(theirs, kwargs, backend):
    if backend in SLOW_BACKENDS and (kwargs.get("foreach") or kwargs.get("fused")):
        pytest.skip("the same step as the set without the switch (the interpreter runs that one)")
    params = make_params("4097", torch.float64) + make_params("views", torch.float64, seed=3)
    reason = _refusal(kwargs)
    if reason is not None:
        with pytest.raises(ValueError, match=reason):
            OURS[theirs](params, **kwargs, backend=backend)
        return
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = OURS[theirs](params, **kwargs, backend=backend)
    # torch's single-tensor path (what foreach/fused/capturable compute too, within rounding);
    # capturable needs a GPU in torch, and is a placement choice, not math
    plain = {k: _as_float(v) for k, v in kwargs.items()
             if k not in ("foreach", "fused", "capturable", "differentiable")}
    ref = theirs(twins, **plain, foreach=False)
    step_in_lockstep([(opt, params), (ref, twins)], range(1, STEPS + 1))
    for p, q in zip(params, twins):
        # fp64 throughout; the native loops order a few products differently: agreement to
        # ~1e-13 relative (the tiniest second moments) and 1e-16 absolute
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-16)
        for key, value in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key].double().cpu(), value.double(), rtol=1e-13, atol=1e-16)
    for key in ("foreach", "fused", "differentiable"):
        assert opt.defaults[key] == kwargs.get(key, opt.defaults[key])  # kept, as torch keeps them


def test_adam_with_decoupled_weight_decay_is_adamw():
    params = make_params("4097", torch.float64)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = fused_optim.Adam(params, weight_decay=0.1, decoupled_weight_decay=True)
    ref = torch.optim.AdamW(twins, weight_decay=0.1, foreach=False)
    step_in_lockstep([(opt, params), (ref, twins)], range(1, STEPS + 1))
    torch.testing.assert_close(params[0], twins[0], rtol=1e-13, atol=1e-16)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


@pytest.mark.parametrize("cls", [fused_optim.Adam, fused_optim.AdamW])
def test_implementation_switches_of_other_types_are_refused(cls):
    with pytest.raises(ValueError, match="foreach"):
        cls(make_params("7", torch.float32), foreach="yes")
