"""python -m bench.adai_subnormal [steps]: the cpu backend's Adai step with every beta1_prod in
the fp32 subnormal range against the same step with beta1_prod normal, interleaved step by
step in one run (1M fp32 elements, median over `steps`, default 2000). beta0 = 0.001 keeps
beta1 near 0.999, so a subnormal beta1_prod would stay subnormal for ~10^4 steps; the kernel
stores it as 0 instead (csrc/cpu/adai.cpp), which this ratio measures. bench/NOTES.md has the
runs."""
import statistics
import sys
import time

import torch

import fused_optim


def _started(n, grad, beta1_prod):
    p = torch.zeros(n, requires_grad=True)
    opt = fused_optim.Adai([p], lr=0.1, betas=(0.001, 0.99), backend="cpu")
    p.grad = grad
    opt.step()
    opt.state[p]["beta1_prod"].fill_(beta1_prod)
    return p, opt


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n = 1 << 20
    torch.manual_seed(0)
    grad = torch.randn(n) * 0.1
    runs = {"subnormal": _started(n, grad, 1e-39), "normal": _started(n, grad, 1.0)}
    samples = {name: [] for name in runs}
    for _ in range(steps):
        for name, (_, opt) in runs.items():
            start = time.perf_counter()
            opt.step()
            samples[name].append(time.perf_counter() - start)
    p, opt = runs["subnormal"]
    beta1_prod = opt.state[p]["beta1_prod"]
    tiny = torch.finfo(torch.float32).tiny
    print(f"{torch.get_num_threads()} threads, {steps} steps; the subnormal run's beta1_prod at the end: "
          f"{int(((beta1_prod > 0) & (beta1_prod < tiny)).sum())} subnormal, {int((beta1_prod == 0).sum())} zero")
    med = {name: statistics.median(times) * 1e3 for name, times in samples.items()}
    print(f"median ms: subnormal {med['subnormal']:.3f}, normal {med['normal']:.3f}, "
          f"subnormal/normal {med['subnormal'] / med['normal']:.2f}x")


if __name__ == "__main__":
    main()
