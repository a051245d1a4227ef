"""Shared test machinery: parameter layouts, deterministic gradients, the fp64 oracle run
and snapshots of params + state."""
import copy
from typing import Callable, Dict, List

import pytest
import torch

from fused_optim import _compat, backends
from fused_optim.dtypes import LOW_PRECISION

STEPS = 6  # >= 5 steps; 6 also carries AdaMomentum's rectify case across rho_t = 5

# The backends that update CPU tensors here: torch always, cpu with the native module, triton
# under its interpreter (no GPU: tests/conftest.py). The GPU backends' CUDA-tensor tests live
# in test_cuda_backend.py and test_triton_backend.py.
CPU_BACKENDS = [b for b in ("torch", "cpu", "triton") if backends.serves(b, torch.device("cpu"))[0]]
# The interpreter runs each kernel block in numpy: class-level matrices give it their small
# layouts only (its own file covers the kernels in depth).
SLOW_BACKENDS = ("triton",)

# Tests of torch.compile tracing our operators (they mutate tensor lists); on older torch the
# step runs eagerly under torch.compile instead (fused_optim/_compat.py, test_compile.py)
needs_compiled_step = pytest.mark.skipif(
    not _compat.STEP_COMPILES,
    reason=f"torch.compile traces operators that mutate tensor lists from torch 2.6 (this is {torch.__version__})")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.requires_grad_()


def make_params(layout: str, dtype: torch.dtype, seed: int = 0) -> List[torch.Tensor]:
    """Leaf params of a named layout. Values are small (0.05 scale) so that a 1e-3 update
    moves a bf16/fp16 param by many ulps: parity on low-precision params then means
    something."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.05).to(dtype)

    if layout == "1":
        return [_leaf(rnd(1))]
    if layout == "7":
        return [_leaf(rnd(7))]
    if layout == "4097":
        return [_leaf(rnd(4097))]
    if layout == "300_small":
        return [_leaf(rnd(i % 13 + 1)) for i in range(300)]
    if layout == "views":
        # a transposed (non-contiguous) param and a param starting one element into its
        # storage (not 16-byte aligned), next to a plain one
        transposed = rnd(65, 33).t()
        shifted = rnd(4098)[1:]
        return [_leaf(transposed), _leaf(shifted), _leaf(rnd(31))]
    if layout == "chunks":
        # several chunks of the native chunk map (65536 elements), with a ragged tail
        return [_leaf(rnd(3, 70001)), _leaf(rnd(5))]
    if layout == "zero_size":
        return [_leaf(rnd(0)), _leaf(rnd(9)), _leaf(rnd(0, 4))]
    raise ValueError(layout)


LAYOUTS = ["1", "7", "4097", "300_small", "views", "chunks", "zero_size"]


def grads_for(params: List[torch.Tensor], step: int, seed: int = 1) -> List[torch.Tensor]:
    """Deterministic gradients for a step, in each param's dtype and layout (strides follow
    the param, as autograd produces them for dense params)."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for p in params:
        values = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1
        grad = torch.empty_like(p, dtype=p.dtype, memory_format=torch.preserve_format)
        grad.copy_(values)
        out.append(grad)
    return out


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def step_in_lockstep(pairs, steps) -> None:
    """Steps several (optimizer, params) pairs on the same gradients, step by step; grads are
    made for the first pair's params and cast to each pair's dtype."""
    first_params = pairs[0][1]
    for step in steps:
        grads = grads_for(first_params, step)
        for opt, params in pairs:
            set_grads(params, [g.to(p.dtype) for g, p in zip(grads, params)])
            opt.step()


def fp64_copy(params: List[torch.Tensor]) -> List[torch.Tensor]:
    return [p.detach().double().clone().requires_grad_() for p in params]


def run_with_oracle(make_opt: Callable, params: List[torch.Tensor], make_oracle: Callable, steps: int = STEPS):
    """Steps the optimizer under test and an fp64 oracle on the same gradients. For bf16/fp16
    params the oracle's params are rounded to that dtype after each step, as the tested
    optimizer stores them, so both start every step from the same values."""
    oracle_params = fp64_copy(params)
    opt, oracle = make_opt(params), make_oracle(oracle_params)
    low = params[0].dtype in LOW_PRECISION if params else False
    for step in range(1, steps + 1):
        grads = grads_for(params, step)
        set_grads(params, grads)
        set_grads(oracle_params, [g.double() for g in grads])
        opt.step()
        oracle.step()
        if low:
            with torch.no_grad():
                for q, p in zip(oracle_params, params):
                    q.copy_(q.to(p.dtype).double())
    return opt, oracle, oracle_params


def snapshot(opt: torch.optim.Optimizer) -> Dict:
    """Deep copy of params and state, to prove a failed call changed nothing."""
    params = [p.detach().clone() for group in opt.param_groups for p in group["params"]]
    state = {id(p): copy.deepcopy(s) for p, s in opt.state.items()}
    extra = getattr(opt, "global_step", None)
    return {"params": params, "state": state, "global_step": extra}


def assert_bf16_runs_bitwise_equal(fused, fused_opt, plain, plain_opt) -> None:
    """Two runs over bf16 params (fused and unfused param modes) ended bit for bit alike:
    params (compared as int16, so NaN payloads and signed zeros count) and every state."""
    for p, q in zip(fused, plain):
        assert torch.equal(p.detach().view(torch.int16), q.detach().view(torch.int16))
        for key, value in fused_opt.state[p].items():
            assert torch.equal(value, plain_opt.state[q][key]), key


def assert_unchanged(opt: torch.optim.Optimizer, before: Dict) -> None:
    after = snapshot(opt)
    for a, b in zip(before["params"], after["params"]):
        assert torch.equal(a, b), "a parameter changed"
    assert before["state"].keys() == after["state"].keys(), "state entries were added or removed"
    for key, s in before["state"].items():
        t = after["state"][key]
        assert s.keys() == t.keys()
        for name in s:
            if torch.is_tensor(s[name]):
                assert torch.equal(s[name], t[name]), f"state {name} changed"
            else:
                assert s[name] == t[name]
    assert before["global_step"] == after["global_step"]
