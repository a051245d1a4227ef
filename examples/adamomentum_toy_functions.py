"""AdaMomentum vs Adam on three classic 2-D test functions: Beale, Ackley, Three-Hump Camel.

The toy experiment of the AdaMomentum paper (Wang et al., Sec. 5.1.1 and App. A): both
optimizers with the paper's lr 0.1 and default betas, full-batch gradients. The plot shows the
trajectories from one start point per function on the loss contours, and the loss curves.
Because one start point proves little, the same runs are also made from a 12 x 12 grid of
start points over each function's usual domain, and the summary counts how many reach the
global minimum.

    python examples/adamomentum_toy_functions.py [--out DIR] [--steps N]
"""
import math
import time

import torch

import fused_optim
from _plotting import command_line, pyplot, save


def beale(x, y):
    # the paper prints 2.2 for the middle constant; the standard Beale function (with its
    # minimum at (3, 0.5), which the paper states) has 2.25
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def ackley(x, y):
    return (-20 * torch.exp(-0.2 * torch.sqrt(0.5 * (x * x + y * y)))
            - torch.exp(0.5 * (torch.cos(2 * math.pi * x) + torch.cos(2 * math.pi * y))) + 20 + math.e)


def three_hump_camel(x, y):
    return 2 * x * x - 1.05 * x**4 + x**6 / 6 + x * y + y * y


# name: (function, global minimum (value 0 for all three), plot/grid half-width, start point).
# The paper gives no start points; ours were picked from a few tried, and the runs from a grid
# of starts show how typical their outcome is.
FUNCTIONS = {
    "Beale": (beale, (3.0, 0.5), 4.5, (1.0, 1.5)),
    "Ackley": (ackley, (0.0, 0.0), 4.0, (2.5, -2.0)),
    "Three-Hump Camel": (three_hump_camel, (0.0, 0.0), 5.0, (-4.0, 3.0)),
}
OPTIMIZERS = {
    "AdaMomentum": lambda p: fused_optim.AdaMomentum(p, lr=0.1),
    "Adam": lambda p: fused_optim.Adam(p, lr=0.1),
}
REACHED = 0.1  # distance to the global minimum that counts as reaching it


def optimize(f, starts, make_optimizer, steps):
    """Runs from every row of `starts` ([n, 2]) at once: both optimizers are elementwise, so
    the rows do not interact. Returns the path [steps + 1, n, 2] and losses [steps + 1, n]."""
    p = starts.clone().requires_grad_()
    opt = make_optimizer([p])
    path, losses = [p.detach().clone()], []
    for _ in range(steps):
        opt.zero_grad()
        loss = f(p[:, 0], p[:, 1])
        loss.sum().backward()
        opt.step()
        losses.append(loss.detach())
        path.append(p.detach().clone())
    losses.append(f(p[:, 0], p[:, 1]).detach())
    return torch.stack(path), torch.stack(losses)


def grid(half_width, n=12):
    # an even n keeps the origin (Ackley's non-differentiable minimum) off the grid
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="xy")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def main():
    parser = command_line(__doc__, "steps", 500, "steps per run")
    args = parser.parse_args()

    start = time.perf_counter()
    runs = {}
    print(f"{args.steps} steps, lr 0.1. From the start point: end, loss, first step with loss < 1e-3;")
    print(f"from 144 grid starts: how many end within {REACHED} of the global minimum.")
    for fname, (f, minimum, half_width, start_point) in FUNCTIONS.items():
        print(f"{fname} (start {start_point}, minimum {minimum}):")
        for oname, make in OPTIMIZERS.items():
            path, losses = optimize(f, torch.tensor([start_point], dtype=torch.float64), make, args.steps)
            runs[fname, oname] = (path[:, 0], losses[:, 0])
            below = (losses[:, 0] < 1e-3).nonzero()
            hit = f"step {int(below[0])}" if len(below) else "never"
            grid_path, _ = optimize(f, grid(half_width), make, args.steps)
            reached = int(((grid_path[-1] - torch.tensor(minimum)).norm(dim=1) < REACHED).sum())
            x, y = path[-1, 0].tolist()
            print(f"  {oname:<12} end ({x:7.3f}, {y:7.3f})  loss {float(losses[-1, 0]):9.2e}  "
                  f"loss < 1e-3: {hit:<10} grid: {reached:3d}/144")
    print(f"time: {time.perf_counter() - start:.1f} s")
    plot(runs, args.out / "adamomentum_toy_functions.png")


def plot(runs, path):
    plt = pyplot()
    if plt is None:
        return
    from matplotlib.colors import BoundaryNorm

    fig, axes = plt.subplots(2, 3, figsize=(13, 8), gridspec_kw={"height_ratios": [3, 2]})
    colors = {"AdaMomentum": "tab:red", "Adam": "tab:blue"}
    for col, (fname, (f, minimum, half_width, start_point)) in enumerate(FUNCTIONS.items()):
        top, bottom = axes[:, col]
        g = torch.linspace(-half_width, half_width, 300, dtype=torch.float64)
        x, y = torch.meshgrid(g, g, indexing="xy")
        z = f(x, y)
        # levels at quantiles of the values, so each shade covers the same area: the functions
        # span several orders of magnitude and evenly spaced levels would show one dark spot
        levels = torch.quantile(z.flatten(), torch.linspace(0, 1, 25, dtype=torch.float64)).unique()
        top.contourf(x, y, z, levels=levels, cmap="Greys_r", norm=BoundaryNorm(levels, 256))
        for oname, color in colors.items():
            trajectory, losses = runs[fname, oname]
            top.plot(trajectory[:, 0], trajectory[:, 1], "-", color=color, lw=1.2, label=oname)
            top.plot(*trajectory[-1], "o", color=color, mec="white")
            bottom.semilogy(losses.clamp(min=1e-16), color=color, label=oname)
        top.plot(*start_point, "*", color="gold", ms=14, mec="black", label="start")
        top.plot(*minimum, "P", color="lime", ms=10, mec="black", label="global minimum")
        top.set(xlim=(-half_width, half_width), ylim=(-half_width, half_width), title=fname, aspect="equal")
        bottom.set(xlabel="step", ylabel="loss (global minimum: 0)")
        bottom.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[1, 0].legend()
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
