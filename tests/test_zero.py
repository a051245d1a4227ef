"""ZeRO on CPU with gloo, 2 local processes (tests/zero_worker.py): torch's
ZeroRedundancyOptimizer and DeepSpeed's ZeRO stages 1 and 2 (with CPU offload), every
optimizer, trained 2-rank, end where the same training ends on 1 rank, to fp32 rounding. For
Adai this holds only because fused_optim.zero.attach registered the partitions, so that the
sum of vhat and the real element count (DeepSpeed's padding excluded) are all-reduced: without
it each rank takes its own mean (LOCAL_MEAN, shown to differ), and a step inside the wrapper
raises instead. DeepSpeed checkpoints resume bit-exactly."""
import importlib.util
import os

import pytest
import torch

import fused_optim
import fused_optim.zero
from fused_optim.registry import OPTIMIZERS

from . import distributed_worker as worker
from . import zero_worker
from .test_distributed import ATOL, BACKENDS, RTOL, run_ranks

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
NO_DEEPSPEED = "deepspeed is not installed (pip install -e \".[deepspeed]\")"
# the offloaded step runs on the CPU: where the cpu backend is what users would pick
OFFLOAD_BACKEND = "cpu" if "cpu" in BACKENDS else "torch"

pytestmark = [
    pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                       reason="this torch build has no torch.distributed with gloo"),
    pytest.mark.slow,
]


def _run_ranks(mode: str, out_dir: str, backends) -> None:
    # DS_ACCELERATOR=cpu: DeepSpeed would otherwise probe for accelerators (zero_worker keeps it
    # from building its shm op)
    run_ranks("tests.zero_worker", mode, out_dir, backends, timeout=600, DS_ACCELERATOR="cpu")


# mode -> backends it runs (each DeepSpeed engine takes a while to build: one backend each)
MODES = {"torch-zero": BACKENDS, "ds1": ["torch"], "ds2": ["torch"], "ds2-offload": [OFFLOAD_BACKEND]}


@pytest.fixture(scope="module", params=list(MODES))
def two_rank_results(request, tmp_path_factory):
    if request.param.startswith("ds") and not HAS_DEEPSPEED:
        pytest.skip(NO_DEEPSPEED)
    out_dir = str(tmp_path_factory.mktemp(request.param))
    _run_ranks(request.param, out_dir, MODES[request.param])
    return request.param, out_dir


def _one_rank(name, backend, extra):
    spec = OPTIMIZERS[name]
    net = worker.model()
    opt = spec.cls(net.parameters(), **spec.cases["default"], **extra, backend=backend)
    worker.train(net, opt, worker.data())
    return [p.detach() for p in net.parameters()]


VARIANTS = [(name, suffix) for name in OPTIMIZERS for suffix in worker.variants(name)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,variant", VARIANTS, ids=[f"{n}{v}" for n, v in VARIANTS])
def test_two_ranks_equal_one(two_rank_results, name, variant, backend):
    mode, out_dir = two_rank_results
    if backend not in MODES[mode]:
        pytest.skip(f"{mode} runs the {MODES[mode]} backend")
    want = _one_rank(name, backend, worker.variants(name)[variant])
    got = torch.load(os.path.join(out_dir, f"{mode}-{name}-{backend}{variant}.pt"))
    for q, p in zip(got, want):
        torch.testing.assert_close(q, p, rtol=RTOL, atol=ATOL)


def test_without_the_reduction_adai_differs(two_rank_results):
    """The same torch ZeRO training with the partition left unregistered (and the check that
    would raise silenced): each rank's mean covers its own params only."""
    mode, out_dir = two_rank_results
    if mode != "torch-zero":
        pytest.skip("shown under torch's ZeroRedundancyOptimizer")
    backend = MODES[mode][-1]
    want = _one_rank("Adai", backend, {})
    got = torch.load(os.path.join(out_dir, f"{mode}-Adai-{backend}{zero_worker.LOCAL_MEAN}.pt"))
    worst = max(float((q - p).abs().max()) for q, p in zip(got, want))
    assert worst > 100 * ATOL, f"a per-rank mean came within {worst} of the global one"


@pytest.mark.skipif(not HAS_DEEPSPEED, reason=NO_DEEPSPEED)
def test_deepspeed_checkpoint_resumes_bit_exactly(tmp_path):
    _run_ranks("ds-ckpt", str(tmp_path), [OFFLOAD_BACKEND])


def test_attach_rejects_what_is_not_a_zero_wrapper():
    opt = fused_optim.Adai([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(TypeError, match="not the Adai inside it"):
        fused_optim.zero.attach(opt)
    with pytest.raises(TypeError, match="is not a ZeroRedundancyOptimizer"):
        fused_optim.zero.attach(object())


@pytest.fixture
def one_rank_group(tmp_path):
    """A 1-rank gloo group in this process, torn down afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_partition_checks_before_registering(one_rank_group):
    from fused_optim.optimizers import _sharding

    flat = torch.nn.Parameter(torch.zeros(10))
    opt = fused_optim.Adai([flat], lr=0.5)
    with pytest.raises(ValueError, match="cannot hold 11 real ones"):
        fused_optim.zero.partition(opt, one_rank_group, [11])
    with pytest.raises(ValueError, match="hold 8 real elements, the model 9"):
        fused_optim.zero.partition(opt, one_rank_group, [8], total_numel=9)
    assert _sharding.shard_group(flat) is None and _sharding.partition_group(opt) is None
    with pytest.raises(TypeError, match="not a fused_optim optimizer"):
        fused_optim.zero.partition(torch.optim.Adam([flat]), one_rank_group)


def test_padding_counts_in_no_mean(one_rank_group):
    """A partition of 10 elements of which 8 are real (2 of padding, zero grads) steps as the 8
    real elements alone do: the mean of vhat is taken over 8."""
    torch.manual_seed(0)
    values, grads = torch.randn(8), torch.randn(8)
    real = torch.nn.Parameter(values.clone())
    real.grad = grads.clone()
    padded = torch.nn.Parameter(torch.cat([values, torch.zeros(2)]))
    padded.grad = torch.cat([grads, torch.zeros(2)])
    plain, zero = fused_optim.Adai([real], lr=0.5), fused_optim.Adai([padded], lr=0.5)
    fused_optim.zero.partition(zero, one_rank_group, [8], total_numel=8)
    for _ in range(3):
        plain.step()
        zero.step()
    torch.testing.assert_close(padded.detach()[:8], real.detach(), rtol=0, atol=0)
    assert torch.equal(padded.detach()[8:], torch.zeros(2))


@pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the cpu backend is unavailable")
def test_offload_benchmark_runs():
    """bench/zero_offload.py on a tiny partition, without its DeepSpeedCPUAdam peer (whose op
    build takes minutes)."""
    from bench import zero_offload

    results = zero_offload.run([4096], ["AdamW", "Adai"], repeats=3, budget_s=1.0, peer=False)
    rows = results["sizes"][0]["rows"]
    assert [r["optimizer"] for r in rows] == ["AdamW", "Adai"] and all(r["ms"] > 0 for r in rows)
