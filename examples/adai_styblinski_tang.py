"""Adai vs SGD-momentum vs Adam: how fast each escapes a minimum, as the minimum gets sharper.

The mean-escape-time experiment of the Adai paper (Xie et al., ICML 2022, Fig. 6 and App. E):
particles start in the global minimum a = -2.9035 of the 10-dimensional Styblinski-Tang
function f(theta) = 1/2 sum_i (theta_i^4 - 16 theta_i^2 + 5 theta_i) and count the steps until
one coordinate crosses the saddle b = 0.1567 into the other valley. The sharpness is rescaled
by k (L(theta) = f(sqrt(k) theta): the Hessian scales by k, the barrier height does not).
The theory: -log(escape rate) = O(1/k) for SGD-momentum and Adai (they prefer flat minima),
O(1/sqrt(k)) for Adam (its escape time depends much less on sharpness).

    python examples/adai_styblinski_tang.py [--out DIR] [--steps N]
"""
import math
import time

import torch

import fused_optim
from _plotting import command_line, pyplot, save

A, SADDLE = -2.903534, 0.156731  # the 1-D minimum we start in and the saddle bounding its valley
H_A = 6 * A * A - 16  # f''(a) = 34.58
DIM = 10  # as in the paper
PARTICLES = 1000  # independent runs, simulated at once as rows of one [PARTICLES, DIM] tensor
# Gradient noise: the paper samples data x ~ N(0, 4I) and uses f(theta - x), but averaged over
# that x the loss is 1/2 (theta^4 + 8 theta^2 + 5 theta) + const, a single convex valley. We add
# Gaussian noise with the covariance that model gives near a minimum, C = H / B (the paper's
# Eq. 2.1), H = k f''(a) here, with 1/B = 250 (ours). Strong noise with small steps keeps the
# dynamics near the continuous-time limit the theory describes (with larger steps, the first
# ~10 full-noise steps of bias-corrected momentum dominate Adai's escapes) and puts the mean
# escape times between ~10^2 and ~3 * 10^4 steps for the k below.
NOISE = 250.0
SHARPNESS = (1.25, 1.6, 2.0, 2.5, 3.2)  # k, ours: the paper gives no values
MIN_ESCAPES = 10  # below, the 95% interval is too wide to plot (from n < 4 on it reaches rate 0)
OPTIMIZERS = {
    # the paper's learning rates for Adai and Momentum (beta 0.9). With the paper's 0.03 for Adam
    # no particle escapes in 2000 steps under this noise; 0.15 puts Adam in the others' range.
    "Adai": lambda p: fused_optim.Adai(p, lr=1e-3),
    "SGD-momentum": lambda p: torch.optim.SGD(p, lr=1e-4, momentum=0.9),
    "Adam": lambda p: fused_optim.Adam(p, lr=0.15),
}


def styblinski_tang_grad(u):
    """d/du of 1/2 (u^4 - 16 u^2 + 5 u), elementwise."""
    return 2 * u**3 - 16 * u + 2.5


def escape_times(make_optimizer, k, steps, seed=0):
    """Step at which each particle first left the valley (steps + 1 where it never did)."""
    gen = torch.Generator().manual_seed(seed)  # same noise for every optimizer
    scale = math.sqrt(k)
    theta = torch.full((PARTICLES, DIM), A / scale, requires_grad=True)
    # Adai's inertia divides by the mean of vhat over ALL elements, here over every particle (in
    # the paper over one run's 10 coordinates). The noise dominates vhat and is the same for all
    # particles, so the mean is the same in expectation, only less noisy.
    opt = make_optimizer([theta])
    sigma = math.sqrt(NOISE * k * H_A)
    times = torch.full((PARTICLES,), steps + 1)
    for t in range(1, steps + 1):
        with torch.no_grad():
            noise = sigma * torch.randn(PARTICLES, DIM, generator=gen)
            theta.grad = scale * styblinski_tang_grad(scale * theta) + noise
        opt.step()
        with torch.no_grad():
            escaped = (scale * theta > SADDLE).any(dim=1) & (times > steps)
            times[escaped] = t
    return times


def escape_rate(times, steps):
    """Maximum-likelihood rate of an exponential escape time, right-censored at `steps` (the
    paper, Eq. 119, lets every run escape and takes (n - 2) / sum(t)), and the number of escapes."""
    n = int((times <= steps).sum())
    return n / float(times.clamp(max=steps).sum()), n


def slope(points):
    """Least-squares slope of y against x."""
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def main():
    parser = command_line(__doc__, "steps", 2000, "steps per run")
    args = parser.parse_args()

    start = time.perf_counter()
    times = {name: [escape_times(make, k, args.steps) for k in SHARPNESS] for name, make in OPTIMIZERS.items()}
    rates = {name: [escape_rate(t, args.steps) for t in runs] for name, runs in times.items()}

    print(f"-log(escape rate per step) from {PARTICLES} particles, {args.steps} steps (escapes in brackets)")
    print(f"{'k':>6}" + "".join(f"{name:>20}" for name in OPTIMIZERS))
    for i, k in enumerate(SHARPNESS):
        cells = [f"{-math.log(r):8.2f} ({n:4d})" if n else "no escape" for r, n in (rates[o][i] for o in OPTIMIZERS)]
        print(f"{k:6.2f}" + "".join(f"{c:>20}" for c in cells))
    print("slope of -log(rate) against 1/k (steeper: prefers flat minima more strongly):")
    for name in OPTIMIZERS:
        points = [(1 / k, -math.log(r)) for k, (r, n) in zip(SHARPNESS, rates[name]) if n >= MIN_ESCAPES]
        print(f"  {name:<14} " + (f"{slope(points):6.1f}" if len(points) >= 2 else "too few escapes"))
    print(f"time: {time.perf_counter() - start:.1f} s")
    plot(times, rates, args.steps, args.out / "adai_styblinski_tang.png")


def plot(times, rates, steps, path):
    plt = pyplot()
    if plt is None:
        return

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in OPTIMIZERS:
        x, y, down, up = [], [], [], []
        for k, (rate, n) in zip(SHARPNESS, rates[name]):
            if n >= MIN_ESCAPES:
                half = 1.96 / math.sqrt(n)  # 95% interval of the rate: the paper's Eq. 120
                x.append(1 / k)
                y.append(-math.log(rate))
                down.append(math.log(1 + half))
                up.append(-math.log(1 - half))
        left.errorbar(x, y, yerr=[down, up], marker="o", capsize=3, label=name)
        middle = times[name][len(SHARPNESS) // 2]
        t = torch.arange(1, steps + 1)
        right.plot(t, (middle[None, :] <= t[:, None]).float().mean(dim=1), label=name)
    left.set(xlabel="1 / k (flatter minimum to the right)", ylabel="-log(escape rate) = log(mean escape time)",
             title="Mean escape time vs. minimum sharpness")
    right.set(xlabel="step", ylabel="fraction of particles escaped", xscale="log",
              title=f"Escapes over time at k = {SHARPNESS[len(SHARPNESS) // 2]}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
