"""The cpu backend's thread policy (csrc/cpu/driver.h): a call runs on one thread per
bytes_per_thread of its tensors, a larger amount once a late worker showed the machine busy,
so small steps never open a parallel region and, under load, neither do steps a second thread
does not pay for (each waits a scheduler slice for its workers), and results stay bitwise the same on
any thread count, also when workers do run (the every_chunk_on_the_threads fixture of
conftest.py, which test_cpu_regimes and test_semantics use too). No timing is asserted."""
import pytest
import torch

import fused_optim

pytestmark = pytest.mark.skipif(not fused_optim.availability("cpu")[0], reason="the native cpu backend is not built")

MiB = 1 << 20
FP32, FP64, BF16 = 0, 1, 2


def _cpu():
    from fused_optim import _cpu

    return _cpu


def _call_bytes(numels, roles, dtype=FP32, **fields):
    """call_bytes of a Call with `roles` address lists (None: a role the call leaves out)."""
    cpu = _cpu()
    lists = [[] if role is None else [0] * len(numels) for role in roles]
    return cpu.call_bytes(cpu.Call(lists=lists, numels=list(numels), dtype=dtype, **fields))


def test_threads_for_gives_one_thread_per_bytes_per_thread():
    threads_for = _cpu().threads_for
    assert threads_for(0, 2, MiB) == 1
    assert threads_for(MiB, 2, MiB) == 1
    assert threads_for(2 * MiB - 1, 2, MiB) == 1
    assert threads_for(2 * MiB, 2, MiB) == 2
    assert threads_for(3 * MiB, 4, MiB) == 3
    assert threads_for(1000 * MiB, 4, MiB) == 4
    assert threads_for(1000 * MiB, 1, MiB) == 1


def test_call_bytes_sum_the_element_sizes_of_the_roles():
    # AdamW fp32: params, grads, exp_avg, exp_avg_sq; no max_exp_avg_sq without amsgrad
    assert _call_bytes([20] * 8, ["p", "g", "m", "v", None]) == 8 * 20 * 16
    assert _call_bytes([20] * 8, ["p", "g", "m", "v", "vmax"]) == 8 * 20 * 20
    assert _call_bytes([10], ["p", "g", "m", "v", None], dtype=FP64) == 10 * 32
    # bf16 params and grads, fp32 states, then the fp32 masters or the 2-byte remainders
    modes = _cpu().storage_modes()
    assert _call_bytes([10], ["p", "g", "m", "v", None], dtype=BF16) == 10 * 12
    assert _call_bytes([10], ["p", "g", "m", "v", None, "master"], dtype=BF16,
                       storage_mode=modes["MASTER"]) == 10 * 16
    assert _call_bytes([10], ["p", "g", "m", "v", None, "remainder"], dtype=BF16,
                       storage_mode=modes["REMAINDER"]) == 10 * 14
    assert _call_bytes([10], ["p", "g", "m", "v", None], dtype=BF16, state_dtype=BF16) == 10 * 8


@pytest.fixture
def default_policy():
    cpu = _cpu()
    cpu.set_bytes_per_thread(cpu.default_quiet_bytes_per_thread, cpu.default_busy_bytes_per_thread)
    cpu.note_worker_wait(0)
    yield cpu
    cpu.set_bytes_per_thread(cpu.default_quiet_bytes_per_thread, cpu.default_busy_bytes_per_thread)


def test_the_defaults_keep_small_steps_on_one_thread(default_policy):
    """Quiet: a second thread from 1 MiB of fp32 AdamW (64K elements, where it pays on an idle
    machine once a single tensor's elements can be split); busy: every fp32 step of up to 2M
    elements on the calling thread (on a loaded 2-core machine a second thread does not pay
    below that: bench/NOTES.md)."""
    cpu = default_policy
    quiet, busy = cpu.default_quiet_bytes_per_thread, cpu.default_busy_bytes_per_thread
    adamw = ["p", "g", "m", "v", None]
    adai = ["p", "g", "m", "v", "beta1_prod"]
    for numels in ([20] * 8, [20, 1], [1 << 14], [1024] * 32):
        assert cpu.threads_for(_call_bytes(numels, adamw), 2, quiet) == 1
        assert cpu.threads_for(_call_bytes(numels, adai), 2, quiet) == 1
    assert cpu.threads_for(_call_bytes([1 << 16], adamw), 2, quiet) == 2
    for numels in ([1 << 20], [1024] * 1024, [1 << 21]):
        assert cpu.threads_for(_call_bytes(numels, adamw), 2, busy) == 1
        assert cpu.threads_for(_call_bytes(numels, adai), 2, busy) == 1
    assert cpu.threads_for(_call_bytes([1 << 22], adamw), 2, busy) == 2


def test_one_pass_calls_cut_a_tensor_for_the_threads():
    """(elements per unit, units) of a one-pass call: the 64K-element chunks, halved (down to
    4096 elements) only while there are fewer than the threads."""
    units = _cpu().elementwise_units
    assert units([1 << 16], 1) == (1 << 16, 1)
    assert units([1 << 16], 2) == (1 << 15, 2)
    assert units([1 << 16], 4) == (1 << 14, 4)
    assert units([40001], 2) == (1 << 15, 2)
    assert units([5000], 2) == (4096, 2)
    assert units([100], 2) == (4096, 1)
    assert units([1 << 20], 2) == (1 << 16, 16)
    assert units([1 << 16, 1 << 16], 2) == (1 << 16, 2)
    assert units([1024] * 3, 8) == (4096, 3)


def test_a_wait_for_a_worker_marks_the_machine_busy(default_policy):
    """A region whose caller, out of chunks, waited over 1 ms for a worker (it waited for a
    core): the busy setting applies to the next calls; a short wait marks the machine quiet."""
    cpu = default_policy
    assert not cpu.machine_busy()
    assert cpu.bytes_per_thread() == cpu.default_quiet_bytes_per_thread
    cpu.note_worker_wait(50_000)  # 50 us: a chunk's work
    assert not cpu.machine_busy()
    cpu.note_worker_wait(12_000_000)  # a scheduler slice
    assert cpu.machine_busy()
    assert cpu.bytes_per_thread() == cpu.default_busy_bytes_per_thread
    cpu.note_worker_wait(20_000)
    assert not cpu.machine_busy()


def test_bytes_per_thread_is_settable_and_checked(default_policy):
    cpu = default_policy
    cpu.set_bytes_per_thread(12345, 67890)
    assert (cpu.quiet_bytes_per_thread(), cpu.busy_bytes_per_thread()) == (12345, 67890)
    assert cpu.bytes_per_thread() == 12345
    with pytest.raises(ValueError, match="bytes_per_thread"):
        cpu.set_bytes_per_thread(0, 1)
    assert cpu.bytes_per_thread() == 12345


def test_adai_sums_do_not_depend_on_the_thread_count(every_chunk_on_the_threads):
    """tensor_sums (Adai's first read of exp_avg_sq) on 1 and 2 threads, over several chunks."""
    cpu = _cpu()
    states = [torch.rand(3 * 65536 + 17, dtype=torch.float32), torch.rand(5, dtype=torch.float32)]
    lists = [[s.data_ptr() for s in states]]
    numels = [s.numel() for s in states]
    one = cpu.tensor_sums(lists, numels, dtype=FP32, num_threads=1)
    two = cpu.tensor_sums(lists, numels, dtype=FP32, num_threads=2)
    assert one == two
    assert one == pytest.approx([float(s.double().sum()) for s in states], rel=1e-12)


ONE_PASS = ["AdamW", "Adam", "AdaMomentum", "InvAdam", "DualAdam", "Lion"]
PARAM_MODES = {"fp32": (torch.float32, {}), "bf16 masters": (torch.bfloat16, {"master_weights": True}),
               "bf16 remainders": (torch.bfloat16, {"param_remainders": True}),
               "bf16 stochastic": (torch.bfloat16, {"stochastic_rounding": True})}


def _one_pass_run(name, dtype, options, threads):
    """Three steps of a single 40001-element tensor (one chunk, cut in two units on 2 threads)
    on `threads` threads: the param and its states."""
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(40001, generator=gen).to(dtype))
    opt = getattr(fused_optim, name)([p], lr=1e-2, weight_decay=1e-2, backend="cpu", **options)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(3):
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
    finally:
        torch.set_num_threads(before)
    return p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}


@pytest.mark.parametrize("mode", PARAM_MODES)
@pytest.mark.parametrize("name", ONE_PASS)
def test_a_tensor_cut_for_the_threads_gives_the_same_bits(name, mode, every_chunk_on_the_threads):
    """A single tensor's units on 2 threads, stochastic rounding keyed by element index included,
    give the bits one thread gives."""
    dtype, options = PARAM_MODES[mode]
    one = _one_pass_run(name, dtype, options, 1)
    two = _one_pass_run(name, dtype, options, 2)
    assert torch.equal(one[0], two[0])
    assert one[1].keys() == two[1].keys()
    for key, value in one[1].items():
        assert torch.equal(value, two[1][key]), key
