"""The torch backend (what backend="auto" uses for GPU tensors until the CUDA kernels land) on
CUDA tensors against the fp64 CPU reference. Skips without a GPU; runs in .ci/gpu."""
import pytest
import torch

from fused_optim.registry import OPTIMIZERS

from . import tolerances
from .helpers import grads_for, make_params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = [(name, case) for name, spec in OPTIMIZERS.items() for case in spec.cases]


@pytest.mark.parametrize("layout", ["4097", "300_small", "views"])
@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_torch_backend_on_cuda_matches_fp64_cpu_reference(name, case, layout):
    spec = OPTIMIZERS[name]
    kwargs = spec.cases[case]
    host = make_params(layout, torch.float32)
    gpu = [p.detach().cuda().requires_grad_() for p in host]
    oracle = [p.detach().double().requires_grad_() for p in host]
    opt = spec.cls(gpu, **kwargs, backend="torch")
    ref = spec.cls(oracle, **kwargs, backend="torch")
    for step in range(1, 6):
        grads = grads_for(host, step)
        for p, g in zip(gpu, grads):
            p.grad = g.cuda()
        for p, g in zip(oracle, grads):
            p.grad = g.double()
        opt.step()
        ref.step()
    rtol, atol = tolerances.param_tolerance(name, torch.float32, oracle[0])
    for p, q in zip(gpu, oracle):
        torch.testing.assert_close(p.detach().cpu().double(), q.detach(), rtol=rtol, atol=atol)
