"""DDP and FSDP2 (fully_shard: DTensor params) on CPU with gloo, 2 local processes: every
optimizer and backend, trained 2-rank, ends where the same training ends on 1 rank with the
whole batch, to fp32 rounding. For Adai this holds only because the sum of vhat and the
element count are all-reduced over the shards (each rank alone sees a different mean); with
max_grad_norm, only because the shards' parts of the grad norm are."""
import os
import subprocess
import sys

import pytest
import torch

import fused_optim
from fused_optim import _compat
from fused_optim.registry import OPTIMIZERS

from . import distributed_worker as worker

BACKENDS = ["torch"] + (["cpu"] if fused_optim.availability("cpu")[0] else [])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no torch.distributed with gloo",
)

# Grads reach the step as the mean over ranks of per-rank means (all-reduce / reduce-scatter)
# instead of one mean over the batch: a few fp32 roundings apart (~1e-7 relative). Adam-type
# steps normalize the gradient, so params after 4 steps differ by about that much of an update
# (lr 1e-3): 1e-6 absolute is ~1/1000 of one update, far below what a wrong mean would do
# (a per-shard Adai mean changes beta1 by tens of percent).
RTOL, ATOL = 1e-5, 1e-6


def run_ranks(worker_module: str, mode: str, out_dir: str, backends, timeout: float = 240, **env_extra: str) -> None:
    """Runs `python -m <worker_module> <rank> 2 <mode> <out_dir> <backends>` on 2 ranks and
    fails with a rank's log if one fails. gloo on the loopback interface: resolving the host
    name (what it does otherwise) can stall on a machine without DNS. Output goes to files, not
    pipes: a rank blocked on a full pipe would stall the other in a collective."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo", **env_extra)
    logs = [open(os.path.join(out_dir, f"rank{rank}.log"), "w") for rank in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-m", worker_module, str(rank), "2", mode, out_dir, ",".join(backends)],
                         cwd=ROOT, env=env, stdout=logs[rank], stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
        for log in logs:
            log.close()
    for rank, p in enumerate(procs):
        with open(os.path.join(out_dir, f"rank{rank}.log")) as f:
            assert p.returncode == 0, f"rank {rank} failed:\n{f.read()[-3000:]}"


def _fsdp2_runs_on_cpu() -> bool:
    # torch 2.4/2.5's FSDP2 (torch.distributed._composable.fsdp) creates CUDA streams, and the
    # public fully_shard of 2.6 records an event on a CPU stream, which has none: both fail on
    # gloo/CPU inside torch (tools/torch_compat.py, 2026-11-27). 2.7 runs (summing the grads:
    # distributed_worker.fsdp2_grad_factor)
    return _compat.torch_version() >= (2, 7)


@pytest.fixture(scope="module", params=["ddp", "fsdp2"])
def two_rank_results(request, tmp_path_factory):
    if request.param == "fsdp2" and not _fsdp2_runs_on_cpu():
        pytest.skip(f"FSDP2 on CPU (gloo) needs torch >= 2.7 (this is {torch.__version__})")
    out_dir = str(tmp_path_factory.mktemp(request.param))
    run_ranks("tests.distributed_worker", request.param, out_dir, BACKENDS)
    return request.param, out_dir


VARIANTS = [(name, suffix) for name in OPTIMIZERS for suffix in worker.variants(name)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}{v}" for n, v in VARIANTS])
def test_two_ranks_equal_one(two_rank_results, name, variant, backend):
    """Clipping variants: under FSDP2 each rank's grads are shards, so the norm is right only
    because the shards' sums of |g|^p (maxima for inf) are all-reduced."""
    mode, out_dir = two_rank_results
    spec = OPTIMIZERS[name]
    net = worker.model()
    extra = worker.variants(name)[variant]
    opt = spec.cls(net.parameters(), **spec.cases["default"], **extra, backend=backend)
    worker.train(net, opt, worker.data())
    if extra:
        assert float(opt.last_grad_norm) > worker.CLIP  # clipping was active on the last step
    distributed = torch.load(os.path.join(out_dir, f"{mode}-{name}-{backend}{variant}.pt"))
    for p, q in zip(net.parameters(), distributed):
        torch.testing.assert_close(q, p.detach(), rtol=RTOL, atol=ATOL)
