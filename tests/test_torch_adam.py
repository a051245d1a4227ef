"""Our Adam/AdamW (reference and cpu backend) against torch.optim.Adam/AdamW in fp64."""
import pytest
import torch

import fused_optim

from .helpers import CPU_BACKENDS, STEPS, make_params, step_in_lockstep

BACKENDS = CPU_BACKENDS
CASES = [
    {},
    {"weight_decay": 0.1},
    {"amsgrad": True},
    {"maximize": True, "weight_decay": 0.05},
    {"betas": (0.5, 0.9), "eps": 1e-4, "lr": 0.01},
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", CASES, ids=str)
@pytest.mark.parametrize("ours,theirs", [(fused_optim.Adam, torch.optim.Adam), (fused_optim.AdamW, torch.optim.AdamW)],
                         ids=["Adam", "AdamW"])
def test_matches_torch_optim_in_fp64(ours, theirs, kwargs, backend):
    params = make_params("4097", torch.float64) + make_params("views", torch.float64, seed=3)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = ours(params, **kwargs, backend=backend)
    ref = theirs(twins, **kwargs, foreach=False)
    step_in_lockstep([(opt, params), (ref, twins)], range(1, STEPS + 1))
    for p, q in zip(params, twins):
        # same fp64 operations in the same order: agreement to a few ulps
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-16)
        for key, value in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key].double(), value.double(), rtol=1e-13, atol=1e-16)
