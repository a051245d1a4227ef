"""InvAdam and DualAdam vs Adam on the Eggholder function: which minima do they end in?

The 2-parameter experiment of the InvAdam/DualAdam paper (Shi et al., Sec. IV-A, Fig. 2):
InvAdam multiplies the momentum by sqrt(vhat) where Adam divides by it, so it takes long steps
where gradients are large (sharp regions) and short ones where they are small; the paper shows
Adam stopping in a sharp minimum near its start while InvAdam travels on to a flat one. DualAdam
starts as InvAdam and blends into Adam. The plot shows the three trajectories from one start
point, and, from a 10 x 10 grid of start points, the loss and sharpness (largest Hessian
eigenvalue) of the points each optimizer ends at.

    python examples/invadam_eggholder.py [--out DIR] [--steps N]
"""
import time

import torch

import fused_optim
from _plotting import command_line, pyplot, save

BOX = 512.0  # the Eggholder function is defined on [-512, 512]^2; global minimum -959.64 at (512, 404.23)
START = (400.0, -200.0)  # ours: the paper gives no start point
# The paper gives no hyperparameters for this experiment (ours). lr 1: Adam moves ~1 per step,
# InvAdam ~lr |g| sqrt(vhat), tens of units on this landscape's slopes. 400 steps: in the grid
# runs every point has stopped moving (steps < 0.01) by step 330. switch_rate 0.01 makes
# DualAdam pure Adam from step 100, a quarter of the run (the paper's 8e-5 switches after 16% of
# its CIFAR runs).
OPTIMIZERS = {
    "Adam": lambda p: fused_optim.Adam(p, lr=1.0),
    "InvAdam": lambda p: fused_optim.InvAdam(p, lr=1.0),
    "DualAdam": lambda p: fused_optim.DualAdam(p, lr=1.0, switch_rate=0.01),
}


def eggholder(x, y):
    return (-(y + 47) * torch.sin(torch.sqrt(torch.abs(x / 2 + y + 47)))
            - x * torch.sin(torch.sqrt(torch.abs(x - (y + 47)))))


def optimize(starts, make_optimizer, steps):
    """Runs from every row of `starts` ([n, 2]) at once (the rows do not interact: the updates
    are elementwise, DualAdam's step count is shared but equal). Returns the path [steps+1, n, 2]."""
    p = starts.clone().requires_grad_()
    opt = make_optimizer([p])
    path = [p.detach().clone()]
    for _ in range(steps):
        opt.zero_grad()
        eggholder(p[:, 0], p[:, 1]).sum().backward()
        opt.step()
        with torch.no_grad():
            # the function is unbounded below outside its box: project back onto it
            p.clamp_(-BOX, BOX)
        path.append(p.detach().clone())
    return torch.stack(path)


def sharpness(points):
    """Largest Hessian eigenvalue at each row of `points` ([n, 2])."""
    p = points.clone().requires_grad_()
    (grad,) = torch.autograd.grad(eggholder(p[:, 0], p[:, 1]).sum(), p, create_graph=True)
    # the points do not interact, so row i of each point's Hessian is d(sum of grad[:, i]) / dp
    rows = [torch.autograd.grad(grad[:, i].sum(), p, retain_graph=True)[0] for i in range(2)]
    return torch.linalg.eigvalsh(torch.stack(rows, dim=1))[:, -1]


def main():
    parser = command_line(__doc__, "steps", 400, "steps per run")
    args = parser.parse_args()

    start = time.perf_counter()
    g = torch.linspace(-450, 450, 10, dtype=torch.float64)  # starts off the box's edges
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    grid_starts = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    paths, ends = {}, {}
    print(f"{args.steps} steps from {START}: end point, loss, sharpness (largest Hessian eigenvalue);")
    print("from 100 grid starts: median sharpness and mean loss of the end points inside the box,")
    print("and how many runs ended on its edge (a constrained minimum: no sharpness).")
    for name, make in OPTIMIZERS.items():
        paths[name] = trajectory = optimize(torch.tensor([START], dtype=torch.float64), make, args.steps)[:, 0]
        end = trajectory[-1:]
        grid_end = optimize(grid_starts, make, args.steps)[-1]
        inside = (grid_end.abs() < BOX).all(dim=1)
        ends[name] = loss, sharp = eggholder(*grid_end[inside].T), sharpness(grid_end[inside])
        print(f"  {name:<8} end ({float(end[0, 0]):7.1f}, {float(end[0, 1]):7.1f})  "
              f"loss {float(eggholder(*end.T)):7.1f}  sharpness {float(sharpness(end)):5.2f}   "
              f"grid: median sharpness {float(sharp.median()):4.2f}, mean loss {float(loss.mean()):7.1f}, "
              f"on the edge {int((~inside).sum()):2d}/100")
    print(f"time: {time.perf_counter() - start:.1f} s")
    plot(paths, ends, args.out / "invadam_eggholder.png")


def plot(paths, ends, path):
    plt = pyplot()
    if plt is None:
        return

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.4), gridspec_kw={"width_ratios": [1, 1.1]})
    g = torch.linspace(-BOX, BOX, 400, dtype=torch.float64)
    x, y = torch.meshgrid(g, g, indexing="xy")
    image = left.contourf(x, y, eggholder(x, y), levels=30, cmap="viridis")
    fig.colorbar(image, ax=left, fraction=0.046, pad=0.04, label="loss")
    # (trajectory color, end-point marker): InvAdam and DualAdam often end at the same points
    styles = {"Adam": ("tab:red", dict(marker="o", color="tab:red", alpha=0.6)),
              "InvAdam": ("white", dict(marker="s", s=70, facecolors="none", edgecolors="tab:blue")),
              "DualAdam": ("tab:orange", dict(marker="x", color="tab:orange"))}
    for name, (color, marker) in styles.items():
        trajectory = paths[name]
        left.plot(trajectory[:, 0], trajectory[:, 1], ".-", color=color, lw=1, ms=3, label=name)
        left.plot(*trajectory[-1], "o", color=color, ms=9, mec="black")
        loss, sharp = ends[name]
        right.scatter(sharp, loss, label=name, **marker)
        line = marker.get("color", marker.get("edgecolors"))
        right.axvline(float(sharp.median()), color=line, ls="--", lw=1, label=f"{name} median")
    left.plot(*START, "*", color="red", ms=16, mec="black", label="start")
    # a margin beyond the box keeps paths along its edge visible
    left.set(xlim=(-BOX - 20, BOX + 20), ylim=(-BOX - 20, BOX + 20), aspect="equal",
             title="Eggholder: trajectories from one start")
    left.legend(loc="lower left", fontsize=8, facecolor="lightgrey")
    right.set(xlabel="sharpness at the end point (largest Hessian eigenvalue)", ylabel="loss at the end point",
              xscale="log", title="End points of runs from 100 grid starts")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
