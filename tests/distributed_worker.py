"""The per-rank side of tests/test_distributed.py: trains a small model with every optimizer
and backend under DDP or FSDP2 (gloo, CPU) and saves the full params rank 0 ends with."""
import datetime
import os
import sys
import traceback

import torch
import torch.distributed as dist

from fused_optim.registry import OPTIMIZERS

STEPS = 4
GLOBAL_BATCH = 8
# max_grad_norm variants (suffix -> extra optimizer arguments): the bound is below this
# model's grad norm on every step, so clipping is active (the test checks it)
CLIP = 0.05
VARIANTS = {"": {}, "-clip": {"max_grad_norm": CLIP}}
INF_NORM = {"-clipinf": {"max_grad_norm": CLIP, "norm_type": float("inf")}}  # Adai only (scale-sensitive)


def variants(name: str):
    return {**VARIANTS, **(INF_NORM if name == "Adai" else {})}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    # 16 x 8 splits evenly over 2 ranks, 3 x 16 does not (2 rows and 1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 8, generator=gen), torch.randn(GLOBAL_BATCH, 3, generator=gen))
            for _ in range(STEPS)]


def train(net, opt, batches, rank=0, world=1, grad_factor=1):
    """The local part of each global batch; the mean loss over it (DDP and FSDP average the
    grads over ranks, so every rank steps with the full batch's mean gradient; where FSDP2
    sums them instead, grad_factor = world divides the loss back). Returns the number of
    collectives each step() made."""
    share = GLOBAL_BATCH // world
    per_step = []
    for x, y in batches:
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        opt.zero_grad()
        (torch.nn.functional.mse_loss(net(x), y) / grad_factor).backward()
        with counted_collectives() as count:
            opt.step()
        per_step.append(count[0])
    return per_step


class counted_collectives:
    """Counts the all-reduces and all-gathers made inside the block (FSDP2 makes its own in
    forward and backward, none in step(): every one counted is the optimizer's)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor")

    def __enter__(self):
        self.count = [0]
        self.saved = {name: getattr(dist, name) for name in self.NAMES}
        for name, original in self.saved.items():
            def counting(*args, _original=original, **kwargs):
                self.count[0] += 1
                return _original(*args, **kwargs)
            setattr(dist, name, counting)
        return self.count

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(dist, name, original)
        return False


def expected_collectives(mode: str, name: str, extra) -> int:
    """Per step under FSDP2: one when the step needs a global reduction (Adai's mean, the grad
    norm of max_grad_norm, or both at once: still one); DDP's params are not sharded: none."""
    if mode != "fsdp2":
        return 0
    return 1 if name in ("Adai", "AdaiW") or extra.get("max_grad_norm") is not None else 0


def wrap(net, mode, world):
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for layer in net:
        if list(layer.parameters()):
            fully_shard(layer, mesh=mesh)
    return fully_shard(net, mesh=mesh)


def fsdp2_grad_factor(rank: int, world: int) -> int:
    """How many times the full batch's mean grad FSDP2 hands the ranks: 1 where it averages
    over them, as on NCCL; 2 (world) with torch 2.7 to 2.8 at least over gloo, which sum
    (measured 2026-11-27, a torch issue: the grads reach every optimizer doubled)."""
    net = wrap(model(), "fsdp2", world)
    x, y = data()[0]
    share = GLOBAL_BATCH // world
    torch.nn.functional.mse_loss(net(x[rank * share:(rank + 1) * share]), y[rank * share:(rank + 1) * share]).backward()
    reference = model()
    torch.nn.functional.mse_loss(reference(x), y).backward()
    first = next(iter(net.parameters())).grad.full_tensor()
    ratio = float(first.norm() / next(iter(reference.parameters())).grad.norm())
    if min(abs(ratio - 1), abs(ratio - world)) > 1e-3:
        raise AssertionError(f"FSDP2 handed the ranks {ratio} times the mean grad")
    return 1 if abs(ratio - 1) < 1e-3 else world


def full_params(net):
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in net.parameters()]


def check_and_save(label: str, counts, want: int, params, rank: int, out_dir: str) -> None:
    """A run's collectives per step must all be `want`; rank 0 saves its params as <label>.pt."""
    if counts != [want] * len(counts):
        raise AssertionError(f"{label}: {counts} collectives per step, expected {want}")
    if rank == 0:
        torch.save(params, os.path.join(out_dir, f"{label}.pt"))


def run_rank(work) -> None:
    """Runs a rank's work, waits for the other rank, and exits with the status: 1 (and the
    traceback in the log) on any error. Both ranks are done at the barrier: the process leaves
    without tearing the process group down, which with DDP's reducer and gloo could hang at
    exit on the CI machine after all work was saved."""
    try:
        work()
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def main(rank: int, world: int, mode: str, out_dir: str, backends) -> None:
    # a file store: no port to pick (one picked by another process in between would hang us)
    store = os.path.join(out_dir, "store")
    # a bounded wait: a rank that never arrives makes the other fail instead of hang
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    def work():
        grad_factor = fsdp2_grad_factor(rank, world) if mode == "fsdp2" else 1
        for name, spec in OPTIMIZERS.items():
            for backend in backends:
                for suffix, extra in variants(name).items():
                    net = wrap(model(), mode, world)
                    opt = spec.cls(net.parameters(), **spec.cases["default"], **extra, backend=backend)
                    counts = train(net, opt, data(), rank, world, grad_factor)
                    check_and_save(f"{mode}-{name}-{backend}{suffix}", counts, expected_collectives(mode, name, extra),
                                   full_params(net), rank, out_dir)

    run_rank(work)


if __name__ == "__main__":
    rank, world, mode, out_dir = sys.argv[1:5]
    main(int(rank), int(world), mode, out_dir, sys.argv[5].split(","))
