"""The per-rank side of tests/test_zero.py: trains tests/distributed_worker.py's model with every
optimizer under torch's ZeroRedundancyOptimizer (with DDP averaging the grads) or DeepSpeed's
ZeRO stage 1/2 (optionally offloaded), gloo on CPU, and saves the full params rank 0 ends with.

Modes: "torch-zero" (also: its consolidated state dict resumes bit-exactly, a rank with an
empty partition, Adai unattached raises); "ds1", "ds2", "ds2-offload" (DeepSpeed); "ds-ckpt"
(DeepSpeed checkpoints, fp32 and bf16: a run resumed from step 2 must end bit-exactly where
the uninterrupted one does). A failed check raises in the worker: the test reports it.
"""
import datetime
import os
import sys

import torch
import torch.distributed as dist

import fused_optim.zero
from fused_optim.optimizers import adai as adai_module
from fused_optim.registry import OPTIMIZERS

from .distributed_worker import GLOBAL_BATCH, check_and_save, counted_collectives, data, model, run_rank, variants

# Adai trained with the partition left unregistered and the wrapper check silenced: each rank
# then takes the mean over its own partition; the test shows that this differs
LOCAL_MEAN = "-localmean"


def counting_steps(opt):
    """Wraps opt.step so that the all-reduces and all-gathers inside it (the optimizer's own,
    not the wrapper's broadcasts or reduce-scatters) are counted per step."""
    counts = []
    step = opt.step

    def counted(*args, **kwargs):
        with counted_collectives() as count:
            result = step(*args, **kwargs)
        counts.append(count[0])
        return result

    opt.step = counted
    return counts


def expected_collectives(name: str, extra) -> int:
    return 1 if name in ("Adai", "AdaiW") or extra.get("max_grad_norm") is not None else 0


def local_share(x, rank, world):
    share = GLOBAL_BATCH // world
    return x[rank * share:(rank + 1) * share]


def train_torch_zero(name, spec, backend, extra, rank, world, attach=True):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    net = model()
    ddp = DistributedDataParallel(net)
    zero = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=spec.cls, **spec.cases["default"], **extra,
                                   backend=backend)
    if attach:
        fused_optim.zero.attach(zero)
    counts = counting_steps(zero.optim)
    silenced = adai_module.zero_caller
    if not attach:  # on purpose: shows what the all-reduce is for
        adai_module.zero_caller = lambda: None
    try:
        for x, y in data():
            zero.zero_grad()
            torch.nn.functional.mse_loss(ddp(local_share(x, rank, world)), local_share(y, rank, world)).backward()
            zero.step()
    finally:
        adai_module.zero_caller = silenced
    return [p.detach().clone() for p in net.parameters()], counts


def check_unattached_raises(step_one, params):
    """A step that needs the whole model (Adai's mean, a clipping norm) on an unregistered
    partition inside a ZeRO wrapper raises before writing."""
    before = [p.detach().clone() for p in params]
    try:
        step_one()
    except RuntimeError as e:
        if "fused_optim.zero.attach" not in str(e):
            raise
    else:
        raise AssertionError("a step stepped on an unregistered ZeRO partition without an error")
    if not all(torch.equal(p, q) for p, q in zip(params, before)):
        raise AssertionError("the failed step changed params")


def torch_zero_unattached(backend, rank, world):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    # Adai (its mean), and a one-pass optimizer that clips (its norm)
    for name, kwargs in (("Adai", dict(lr=0.5)), ("AdamW", dict(max_grad_norm=0.1))):
        net = model()
        zero = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=OPTIMIZERS[name].cls, backend=backend,
                                       **kwargs)
        x, y = data()[0]
        torch.nn.functional.mse_loss(net(local_share(x, rank, world)), local_share(y, rank, world)).backward()
        check_unattached_raises(zero.step, list(net.parameters()))
        if zero.optim.state:
            raise AssertionError(f"the failed {name} step left state behind")


def torch_zero_checkpoint(name, spec, backend, rank, world, out_dir):
    """ZeroRedundancyOptimizer's consolidated state dict (consolidate_state_dict, then
    state_dict on rank 0, loaded on every rank) resumes bit-exactly."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    batches = data()

    def build(saved=None):
        net = model()
        if saved is not None:
            net.load_state_dict(saved["model"])
        zero = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=spec.cls, **spec.cases["default"],
                                       backend=backend)
        fused_optim.zero.attach(zero)
        if saved is not None:
            zero.load_state_dict(saved["optimizer"])
        return net, DistributedDataParallel(net), zero

    def steps(ddp, zero, part):
        for x, y in part:
            zero.zero_grad()
            torch.nn.functional.mse_loss(ddp(local_share(x, rank, world)), local_share(y, rank, world)).backward()
            zero.step()

    first, first_ddp, first_zero = build()
    steps(first_ddp, first_zero, batches[:2])
    first_zero.consolidate_state_dict(to=0)
    path = os.path.join(out_dir, f"zero-{name}-{backend}.pt")
    if rank == 0:
        torch.save({"model": first.state_dict(), "optimizer": first_zero.state_dict()}, path)
    dist.barrier()
    steps(first_ddp, first_zero, batches[2:])
    second, second_ddp, second_zero = build(torch.load(path))
    steps(second_ddp, second_zero, batches[2:])
    for p, q in zip(first.parameters(), second.parameters()):
        if not torch.equal(p, q):
            raise AssertionError(f"{name} {backend}: resumed from ZeroRedundancyOptimizer's state dict, the params "
                                 f"differ by {(p - q).abs().max().item()}")


def torch_zero_empty_rank(rank, world):
    """One param: rank 1's partition is empty, and its Adai still takes part in each step's
    collective (with and without max_grad_norm), or rank 0 would wait for it."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    for extra in ({}, {"max_grad_norm": 0.05}):
        nets = []
        for zero in (True, False):
            torch.manual_seed(0)
            net = torch.nn.Linear(8, 3, bias=False)
            if zero:
                ddp, share = DistributedDataParallel(net), rank
                opt = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=OPTIMIZERS["Adai"].cls, lr=0.5,
                                              **extra)
                fused_optim.zero.attach(opt)
                if sum(len(g["params"]) for g in opt.optim.param_groups) != 1 - rank:
                    raise AssertionError("expected rank 1's partition to be empty")
            else:
                ddp, share = net, 0
                opt = OPTIMIZERS["Adai"].cls(net.parameters(), lr=0.5, **extra)
            for x, y in data():
                opt.zero_grad()
                size = world if zero else 1
                torch.nn.functional.mse_loss(ddp(local_share(x, share, size)), local_share(y, share, size)).backward()
                opt.step()
            nets.append(net.weight.detach())
        torch.testing.assert_close(nets[0], nets[1], rtol=1e-5, atol=1e-6)


def ds_config(stage: int, offload: bool, world: int, bf16: bool = False):
    zero = {"stage": stage}
    # bf16 with stage 1 and fp32 grad accumulation: DeepSpeed's BF16_Optimizer, not its ZeRO one
    types = {"data_types": {"grad_accum_dtype": "fp32"}} if bf16 and stage == 1 else {}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        # DeepSpeed clips to a total norm of 1.0 unless told otherwise; the 1-rank run does not
        "gradient_clipping": 0.0,
        "bf16": {"enabled": bf16},
        **types,
    }


def ds_engine(name, spec, backend, extra, stage, offload, world, bf16=False):
    import deepspeed

    net = model()
    opt = spec.cls(net.parameters(), **spec.cases["default"], **extra, backend=backend)
    engine, *_ = deepspeed.initialize(model=net, optimizer=opt, config=ds_config(stage, offload, world, bf16))
    fused_optim.zero.attach(engine)
    return engine


def ds_steps(engine, batches, rank, world, dtype=torch.float32):
    for x, y in batches:
        x, y = local_share(x, rank, world).to(dtype), local_share(y, rank, world).to(dtype)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()


def train_ds(name, spec, backend, extra, rank, world, stage, offload):
    engine = ds_engine(name, spec, backend, extra, stage, offload, world)
    counts = counting_steps(engine.optimizer.optimizer)
    ds_steps(engine, data(), rank, world)
    return [p.detach().clone() for p in engine.module.parameters()], counts


def check_ds_checkpoint(name, spec, backend, rank, world, out_dir, extra=None, bf16=False, stage=2):
    """2 steps, save, 2 more; a new engine loads the checkpoint and takes the same 2. bf16:
    DeepSpeed's bf16 training (its optimizer steps fp32 masters) with extra's options."""
    batches, extra = data(), extra or {}
    dtype = torch.bfloat16 if bf16 else torch.float32
    path = os.path.join(out_dir, f"ckpt-{name}-{backend}{'-bf16' if bf16 else ''}-{stage}")
    first = ds_engine(name, spec, backend, extra, stage, False, world, bf16)
    ds_steps(first, batches[:2], rank, world, dtype)
    first.save_checkpoint(path, tag="t")
    ds_steps(first, batches[2:], rank, world, dtype)
    second = ds_engine(name, spec, backend, extra, stage, False, world, bf16)
    if bf16 and stage == 1 and type(second.optimizer).__name__ != "BF16_Optimizer":
        raise AssertionError(f"bf16 stage 1 ran {type(second.optimizer).__name__}, not BF16_Optimizer")
    second.load_checkpoint(path, tag="t")
    ds_steps(second, batches[2:], rank, world, dtype)
    for p, q in zip(first.module.parameters(), second.module.parameters()):
        if not torch.equal(p, q):
            raise AssertionError(f"{name} {backend}: resumed from a DeepSpeed checkpoint, the params differ by "
                                 f"{(p - q).abs().max().item()}")
    if name in ("DualAdam", "InvAdam"):
        steps = [engine.optimizer.optimizer.global_step for engine in (first, second)]
        if steps != [len(batches)] * 2:
            raise AssertionError(f"{name}: global step {steps[1]} after resuming, {steps[0]} uninterrupted")


def ds_unattached(backend, rank, world):
    import deepspeed

    net = model()
    opt = OPTIMIZERS["Adai"].cls(net.parameters(), lr=0.5, backend=backend)
    engine, *_ = deepspeed.initialize(model=net, optimizer=opt, config=ds_config(2, False, world))
    x, y = data()[0]
    engine.backward(torch.nn.functional.mse_loss(engine(local_share(x, rank, world)), local_share(y, rank, world)))
    check_unattached_raises(engine.step, engine.optimizer.single_partition_of_fp32_groups)


def main(rank: int, world: int, mode: str, out_dir: str, backends) -> None:
    store = os.path.join(out_dir, "store")
    timeout = datetime.timedelta(seconds=120)
    if mode.startswith("ds"):
        import deepspeed
        import deepspeed.ops

        # DeepSpeed's shared-memory comm op serves only its inference all-reduce (comm/torch.py);
        # ZeRO training communicates through torch.distributed. Marked unavailable, it is not
        # built with g++ on first use (about a minute on 2 cores, in every fresh CI run).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))  # what a launcher sets
        deepspeed.init_distributed(dist_backend="gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                   timeout=timeout, verbose=False, auto_mpi_discovery=False)
    else:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timeout)
    def work():
        if mode == "torch-zero":
            torch_zero_unattached(backends[-1], rank, world)
            torch_zero_empty_rank(rank, world)
            for name, spec in OPTIMIZERS.items():
                torch_zero_checkpoint(name, spec, backends[-1], rank, world, out_dir)
        if mode == "ds2":
            ds_unattached(backends[-1], rank, world)
        if mode == "ds-ckpt":  # bf16 training with bf16 states (state_dtype: the cpu backend keeps fp32)
            for name, stage in (("Adai", 2), ("DualAdam", 2), ("Adai", 1)):
                check_ds_checkpoint(name, OPTIMIZERS[name], "torch", rank, world, out_dir,
                                    {"state_dtype": torch.bfloat16}, bf16=True, stage=stage)
        for name, spec in OPTIMIZERS.items():
            for backend in backends:
                if mode == "ds-ckpt":
                    check_ds_checkpoint(name, spec, backend, rank, world, out_dir)
                    continue
                runs = dict(variants(name))
                if mode == "torch-zero" and name == "Adai":
                    runs[LOCAL_MEAN] = {}
                for suffix, extra in runs.items():
                    if mode == "torch-zero":
                        params, counts = train_torch_zero(name, spec, backend, extra, rank, world,
                                                          attach=suffix != LOCAL_MEAN)
                    else:
                        params, counts = train_ds(name, spec, backend, extra, rank, world, stage=int(mode[2]),
                                                  offload=mode.endswith("offload"))
                    want = 0 if suffix == LOCAL_MEAN else expected_collectives(name, extra)
                    check_and_save(f"{mode}-{name}-{backend}{suffix}", counts, want, params, rank, out_dir)

    run_rank(work)


if __name__ == "__main__":
    rank, world, mode, out_dir = sys.argv[1:5]
    main(int(rank), int(world), mode, out_dir, sys.argv[5].split(","))
