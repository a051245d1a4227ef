"""What every fused_optim Triton kernel shares: the multi-tensor pointer table, the
block -> (tensor, offset) map, loads/stores with the dtype rules of the spec, and the
per-tensor scalars formed on the device.

One launch covers a whole tensor list. The host builds, once per list, a device table with one
row per non-empty tensor: the int64 address of each role (param, grad, states...), the address
of the tensor's step counter, and its element count; plus a block map with one (row, start)
pair per BLOCK elements. Kernels cast the addresses to typed pointers, so one compiled kernel
serves any list of any length. Plans are cached while the tensors' addresses and sizes stay
the same, which in training is every step after the first.
"""
import collections
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# -------------------------------------------------------------------------------------------
# Device-side helpers
# -------------------------------------------------------------------------------------------


@triton.jit
def block_coords(blocks_ptr, BLOCK: tl.constexpr):
    """(row, start) of this program's block; start is a multiple of BLOCK, in int64 so that
    tensors past 2^31 elements index correctly."""
    pid = tl.program_id(0).to(tl.int64)
    row = tl.load(blocks_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(blocks_ptr + 2 * pid + 1), BLOCK)
    return row, start


@triton.jit
def column_ptr(table_ptr, row, col: tl.constexpr, NCOLS: tl.constexpr, DTYPE: tl.constexpr,
               ALIGNED: tl.constexpr):
    """The typed pointer in column `col` of a table row. ALIGNED (every address of the call is
    16-byte aligned, decided on the host) lets the compiler emit 16-byte vector accesses. The
    hint goes on the pointer, after the cast: Triton's alignment analysis does not carry a hint
    on the integer through the int-to-pointer cast (checked in the PTX: scalar loads only)."""
    ptr = tl.load(table_ptr + row * NCOLS + col).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def widened(x, MATH: tl.constexpr):
    """x in the math dtype. bf16 is widened with integer ops (its bits are the top half of an
    fp32): exact, and the interpreter's own bf16 -> fp32 cast mangles subnormals."""
    if x.dtype == tl.bfloat16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True).to(MATH)
    else:
        return x.to(MATH)


@triton.jit
def load_math(ptr, offs, mask, FULL: tl.constexpr, MATH: tl.constexpr):
    """Loads and widens to the math dtype. FULL blocks need no mask (vectorizable)."""
    if FULL:
        x = tl.load(ptr + offs)
    else:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    return widened(x, MATH)


@triton.jit
def rounded(x, DTYPE: tl.constexpr):
    """x rounded to DTYPE, round to nearest even. bf16 is rounded with integer ops rather than
    .to(): the interpreter truncates fp32 -> bf16 (it ignores the rounding mode), and the
    explicit form is the same on both. NaN stays a quiet NaN (0x7FC0), as torch does."""
    if DTYPE == tl.bfloat16:
        x32 = x.to(tl.float32)
        bits = x32.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        bits = tl.where(x32 != x32, 0x7FC0, bits)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def as_stored(x, DTYPE: tl.constexpr, MATH: tl.constexpr):
    """The value a state holds after being stored in DTYPE, back in the math dtype: the
    reference keeps low-precision states in their dtype between operations, so later
    statements see the rounded value."""
    if DTYPE == MATH:
        return x
    else:
        return widened(rounded(x, DTYPE), MATH)


@triton.jit
def store_rounded(ptr, offs, x, mask, FULL: tl.constexpr, DTYPE: tl.constexpr):
    if FULL:
        tl.store(ptr + offs, rounded(x, DTYPE))
    else:
        tl.store(ptr + offs, rounded(x, DTYPE), mask=mask)


@triton.jit
def div(a, b, MATH: tl.constexpr):
    """a / b rounded to nearest, as torch divides: Triton's fp32 `/` is an approximate
    division (2 ulp), its fp64 one is IEEE already."""
    if MATH == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def sqrt(x, MATH: tl.constexpr):
    """Square root rounded to nearest (tl.sqrt is the fast approximate one in fp32)."""
    if MATH == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def pow_int(base, t):
    """base^t in fp64 for a whole number t >= 0, by binary exponentiation: Triton has no fp64
    pow the interpreter can run, and exp(t log(base)) loses ~t ulps. Error: log2(t) ulps,
    far below the fp32 rounding of the math (reference: python's beta ** step)."""
    result = tl.full((), 1.0, tl.float64)
    b = base.to(tl.float64)
    e = t.to(tl.int64)
    while e > 0:
        if (e % 2) == 1:
            result = result * b
        b = b * b
        e = e // 2
    return result


@triton.jit
def step_of(table_ptr, row, COL: tl.constexpr, NCOLS: tl.constexpr):
    """t = steps[i] + 1 in fp64: the step counter is the count BEFORE this step (the optimizer
    advances it after every call succeeded)."""
    step_ptr = column_ptr(table_ptr, row, COL, NCOLS, tl.float32, False)
    return tl.load(step_ptr).to(tl.float64) + 1.0


@triton.jit
def active_numel(numel, found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """numel, or 0 when a GradScaler found inf/NaN grads: every lane is then masked off and
    the call stores nothing. (A limit rather than a boolean and-ed into the mask: the
    interpreter cannot broadcast a scalar boolean against a block.)"""
    if HAS_FOUND_INF:
        return tl.where(tl.load(found_inf_ptr) == 0.0, numel, 0)
    else:
        return numel


@triton.jit
def unscaled(g, grad_scale_ptr, HAS_GRAD_SCALE: tl.constexpr, MATH: tl.constexpr):
    """g / grad_scale, in the math dtype (torch's fused Adam divides likewise)."""
    if HAS_GRAD_SCALE:
        return div(g, tl.load(grad_scale_ptr).to(MATH), MATH)
    else:
        return g


# -------------------------------------------------------------------------------------------
# Host side
# -------------------------------------------------------------------------------------------

# Decided when the kernels were defined: triton reads TRITON_INTERPRET when @triton.jit runs.
INTERPRETED = isinstance(block_coords, InterpretedFunction)

_MATH = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.float32,
         torch.float16: tl.float32}
_TL = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
       torch.float16: tl.float16}


def tl_dtype(dtype: torch.dtype):
    return _TL[dtype]


def math_dtype(dtype: torch.dtype):
    """fp32 registers for fp32/bf16/fp16 params, fp64 for fp64 (spec: fp32 math)."""
    return _MATH[dtype]


def hyper(value: float):
    """A hyperparameter as an fp64 runtime argument. Kernels declare these `tl.float64`, so a
    new value never compiles a new kernel and fp64 params see the exact value. The interpreter
    ignores annotations and would round a python float to fp32 when it meets a tensor, so it
    gets an fp64 scalar of its own."""
    value = float(value)
    if not INTERPRETED:
        return value
    import numpy as np
    from triton.runtime.interpreter import TensorHandle

    return tl.tensor(TensorHandle(np.array([value], dtype=np.float64), tl.float64), tl.float64)


def launch_config(total: int) -> Tuple[int, int]:
    """(BLOCK, num_warps) by the call's element count: small blocks keep a list of small
    tensors from being mostly masked lanes, large ones amortize the table lookups. Two
    variants only, so the compile cache stays small."""
    if total < (1 << 22):
        return 1024, 4
    return 4096, 8


class Plan:
    """One tensor list's launch description, all on the device: `table` (rows of role
    addresses, a tag per tensor where the kernel needs one, the step address and numel),
    `blocks` ((row, start) per block), and, when the steps are read on the host, `step_values`
    (the buffer the step column points into). Built from the call's address lists (role k of
    tensor i: addresses[k][i]), the numels and, when the kernel reads the counters where
    they are, their addresses."""

    def __init__(self, addresses: List[List[int]], numels: List[int], step_addresses: Optional[List[int]],
                 host_steps: bool, device: torch.device, tags: Optional[List[int]] = None):
        rows, block_pairs = [], []
        self.numel = 0
        self.total_rows = 0
        self.step_values = None
        has_steps = step_addresses is not None or host_steps
        if host_steps:
            self.step_values = torch.zeros(len(numels), dtype=torch.float32, device=device)
        self.block, self.num_warps = launch_config(sum(numels))
        aligned = True
        for i, n in enumerate(numels):
            if n == 0:
                continue  # nothing to load; the table never points at an empty tensor
            row_addresses = [column[i] for column in addresses]
            aligned = aligned and all(a % 16 == 0 for a in row_addresses)
            if tags is not None:  # a number per tensor after the addresses (param_storage.py's key)
                row_addresses.append(tags[i])
            if host_steps:
                row_addresses.append(self.step_values.data_ptr() + 4 * i)
            elif has_steps:
                row_addresses.append(step_addresses[i])
            row_addresses.append(n)
            row = len(rows)
            rows.append(row_addresses)
            for start in range(0, n, self.block):
                block_pairs.append((row, start))
            self.numel += n
        self.ncols = len(addresses) + (1 if tags is not None else 0) + (1 if has_steps else 0) + 1
        self.aligned = aligned
        self.grid = (len(block_pairs),)
        self.table = torch.tensor(rows, dtype=torch.int64).reshape(-1, self.ncols).to(device)
        self.blocks = torch.tensor(block_pairs, dtype=torch.int64).reshape(-1, 2).to(device)
        self.partials = None  # a reduction's per-block output, allocated by its first user

    def fill_steps(self, steps: List[torch.Tensor]) -> None:
        """Host-read steps: one copy of all counters into the buffer the table points at."""
        if self.step_values is not None and steps:
            self.fill_counts(torch.stack([s.detach().reshape(()) for s in steps]).float())

    def fill_counts(self, counts) -> None:
        """Host-read steps given as their counts (a list of numbers or a float32 CPU tensor)."""
        if self.step_values is not None and len(counts):
            if not torch.is_tensor(counts):
                counts = torch.tensor(counts, dtype=torch.float32)
            self.step_values.copy_(to_device_async(counts, self.step_values.device))


def to_device_async(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without stalling the host. A copy from pageable memory makes
    the host wait until the stream has drained, which puts the whole previous step inside
    every step's host time; from pinned memory the copy is queued like a kernel, and torch's
    pinned-memory cache keeps the block until the copy has run."""
    if host.device == device:
        return host
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class PlanCache:
    """Plans by tensor list, least recently used first out. The key holds each tensor's
    address and size (and the step counters' addresses when the kernel reads them): exactly
    what the table records, so a plan is valid whenever its key matches, whatever the tensor
    objects. Not keying on identity matters for grads: zero_grad(set_to_none=True) makes new
    grad tensors every step, which the caching allocator usually puts at the same addresses.
    A tensor at a new address (load_state_dict, a reallocated grad) makes a new plan: a
    host-built table and one host-to-device copy."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._plans: "collections.OrderedDict[tuple, Plan]" = collections.OrderedDict()
        self.builds = 0
        self.hits = 0

    def get(self, kind: str, addresses: List[List[int]], numels: List[int], step_addresses: Optional[List[int]],
            host_steps: bool, device: torch.device, tags: Optional[List[int]] = None) -> Plan:
        """The plan of these address lists (Plan's arguments), built on a miss."""
        key = (kind, str(device), host_steps, None if tags is None else tuple(tags), tuple(numels),
               *map(tuple, addresses), None if step_addresses is None else tuple(step_addresses))
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            self.hits += 1
            return plan
        plan = Plan(addresses, numels, step_addresses, host_steps, device, tags)
        self.builds += 1
        self._plans[key] = plan
        if len(self._plans) > self.capacity:
            self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        self._plans.clear()


PLANS = PlanCache()


def launch_options(num_warps: int) -> Dict[str, object]:
    """Compile options of a launch. enable_fp_fusion=False: the kernels mirror the reference's
    separately rounded operations statement by statement, in fp64 too (1 - lr wd, 1 - beta1
    formed on the device round as python rounds them); a contracted a*b+c would differ in the
    last bit and, for DualAdam's 1 - t*xi >= xi, flip the switching step (spec)."""
    return {"num_warps": num_warps, "enable_fp_fusion": False}


_DUMMIES: Dict[str, torch.Tensor] = {}


def dummy(device: torch.device) -> torch.Tensor:
    """A placeholder pointer argument for an absent optional tensor (its flag is off, so the
    kernel never reads it): one per device, not an allocation per call."""
    key = str(device)
    if key not in _DUMMIES:
        _DUMMIES[key] = torch.zeros((), dtype=torch.float32, device=device)
    return _DUMMIES[key]


def launch(kernel, grid: Tuple[int, ...], args: Sequence[object], constexprs: Dict[str, object],
           num_warps: int = 4) -> None:
    """Every kernel launch of the backend goes through here (tests record them by replacing
    it). Python floats among the runtime arguments are hyperparameters: fp64 (hyper)."""
    runtime = [hyper(a) if isinstance(a, float) else a for a in args]
    kernel[grid](*runtime, **constexprs, **launch_options(num_warps))


def launch_plan(kernel, plan: Plan, args: Sequence[object], constexprs: Dict[str, object]) -> None:
    """One launch over the plan's blocks (none for a list of empty tensors); the table's
    layout and the block size join the constexprs."""
    if plan.grid[0] == 0:
        return
    launch(kernel, plan.grid, args, dict(constexprs, NCOLS=plan.ncols, ALIGNED=plan.aligned, BLOCK=plan.block),
           plan.num_warps)
