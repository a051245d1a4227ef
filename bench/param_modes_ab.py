"""python -m bench.param_modes_ab: the cpu backend's fused bf16 param modes (master weights,
remainders, stochastic rounding in the kernels' one pass) against the unfused path the torch
backend and compiled steps take (fp32 copies through the same kernels, params written back by
torch ops): AdamW on one 16M-element bf16 tensor, the two interleaved step by step, median of
10 steps after 2 warm-up steps. The results are bitwise equal (tests/test_mixed_precision.py)."""
import statistics
import time

import torch

import fused_optim
from fused_optim.optimizers import _mixed_precision as mixed


def main() -> None:
    n = 16_000_000  # elements
    torch.manual_seed(0)
    init = torch.randn(n).to(torch.bfloat16)
    grad = (torch.randn(n) * 1e-2).to(torch.bfloat16)
    fused_backends = mixed.FUSED_BACKENDS
    for option in ("master_weights", "param_remainders", "stochastic_rounding"):
        opts = {}
        for fuse in (True, False):
            p = init.clone().requires_grad_()
            p.grad = grad
            opts[fuse] = (fused_optim.AdamW([p], backend="cpu", **{option: True}), fuse)
        samples = {True: [], False: []}
        for rep in range(12):
            for fuse, (opt, _) in opts.items():
                mixed.FUSED_BACKENDS = fused_backends if fuse else ()
                start = time.perf_counter()
                opt.step()
                samples[fuse].append(time.perf_counter() - start)
        f, u = statistics.median(samples[True][2:]), statistics.median(samples[False][2:])
        print(f"AdamW {option}: fused {f*1e3:.2f} ms, unfused {u*1e3:.2f} ms, unfused/fused {u/f:.2f}x")


if __name__ == "__main__":
    main()
