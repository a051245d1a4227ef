"""The cpu backend's thread policy (csrc/cpu/driver.h): a call runs on one thread per
bytes_per_thread of its tensors, so small steps never open a parallel region (on a busy
machine each one waits a scheduler slice for its workers), and results stay bitwise the same on
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


def test_small_steps_stay_on_one_thread_by_default():
    """The default keeps every fp32 step of up to 2M elements on the calling thread (on a busy
    2-core machine a second thread does not pay below that: bench/NOTES.md), and gives a
    large one the threads it asks for."""
    cpu = _cpu()
    default = cpu.default_bytes_per_thread
    assert cpu.bytes_per_thread() == default
    adamw = ["p", "g", "m", "v", None]
    adai = ["p", "g", "m", "v", "beta1_prod"]
    for numels in ([20] * 8, [20, 1], [1 << 20], [1024] * 1024, [1 << 21]):
        assert cpu.threads_for(_call_bytes(numels, adamw), 2, default) == 1
        assert cpu.threads_for(_call_bytes(numels, adai), 2, default) == 1
    assert cpu.threads_for(_call_bytes([1 << 24], adamw), 2, default) == 2


def test_bytes_per_thread_is_settable_and_checked():
    cpu = _cpu()
    try:
        cpu.set_bytes_per_thread(12345)
        assert cpu.bytes_per_thread() == 12345
        with pytest.raises(ValueError, match="bytes_per_thread"):
            cpu.set_bytes_per_thread(0)
        assert cpu.bytes_per_thread() == 12345
    finally:
        cpu.set_bytes_per_thread(cpu.default_bytes_per_thread)


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
