"""How the Triton kernels load and store the params of a block in each param storage mode
(fused_optim/_param_storage.py; the reference is fused_optim/optimizers/_mixed_precision.py, bit
for bit; the native mirrors are csrc/include/fused_optim/math/rounding.h and
csrc/{cpu,cuda}/param_access.*): the param itself (PLAIN), its fp32 master (MASTER: the param
then receives the master rounded to nearest, ties away from zero; the param is not read), the
bf16 param joined with its int16 remainder (REMAINDER), or the bf16 param rounded
stochastically (STOCHASTIC: a PCG hash of seed, the tensor's index, its step and the element's
index). The master/remainder address, or for STOCHASTIC the tensor's base key
(_param_storage.base_keys), sits in column EXTRA of the table row.
"""
import triton
import triton.language as tl

from .. import _param_storage
from .multi_tensor import column_ptr, load_math, store_rounded

# The STORAGE constexpr's values: the mode codes of fused_optim._param_storage (and of math/rounding.h)
PLAIN = tl.constexpr(_param_storage.PLAIN)
MASTER = tl.constexpr(_param_storage.MASTER)
REMAINDER = tl.constexpr(_param_storage.REMAINDER)
STOCHASTIC = tl.constexpr(_param_storage.STOCHASTIC)


@triton.jit
def pcg_hash(x):
    """PCG's output permutation on uint32 values (reference: _param_storage.pcg)."""
    state = x * 747796405 + 2891336453
    word = ((state >> ((state >> 28) + 4)) ^ state) * 277803737
    return (word >> 22) ^ word


@triton.jit
def bf16_round_bits(x, increment):
    """The bf16 bits (uint32) of fp32 x with `increment` added to the magnitude before the low
    16 bits are dropped; NaN -> a quiet NaN of its sign (reference: _round_bits)."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    magnitude = bits & 0x7FFFFFFF
    rounded = ((magnitude + increment) >> 16) | (sign >> 16)
    return tl.where(magnitude > 0x7F800000, (sign >> 16) | 0x7FC0, rounded)


@triton.jit
def _as_bf16(bits):
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def rounding_key(table_ptr, row, start, t, STORAGE: tl.constexpr, EXTRA: tl.constexpr, NCOLS: tl.constexpr):
    """STOCHASTIC: the block's hash key hash(hash(base ^ step) ^ (start >> 32)), where the table
    holds base = hash(seed ^ tensor index * golden ratio) (_param_storage.base_keys) and t is
    the tensor's step (reference: random_increments). The other modes use no key (0)."""
    if STORAGE == STOCHASTIC:
        base = tl.load(table_ptr + row * NCOLS + EXTRA).to(tl.uint32)
        key = pcg_hash(base ^ t.to(tl.int64).to(tl.uint32))
        return pcg_hash(key ^ (start >> 32).to(tl.uint32))
    else:
        return tl.full((), 0, tl.uint32)


@triton.jit
def load_param(table_ptr, row, offs, mask, NCOLS: tl.constexpr, EXTRA: tl.constexpr, P: tl.constexpr,
               MATH: tl.constexpr, STORAGE: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr):
    """The params of the block in the math dtype."""
    if STORAGE == MASTER:
        return load_math(column_ptr(table_ptr, row, EXTRA, NCOLS, tl.float32, ALIGNED), offs, mask, FULL, MATH)
    elif STORAGE == REMAINDER:
        p_ptr = column_ptr(table_ptr, row, 0, NCOLS, P, ALIGNED)
        r_ptr = column_ptr(table_ptr, row, EXTRA, NCOLS, tl.int16, ALIGNED)
        if FULL:
            p = tl.load(p_ptr + offs)
            r = tl.load(r_ptr + offs)
        else:
            p = tl.load(p_ptr + offs, mask=mask, other=0.0)
            r = tl.load(r_ptr + offs, mask=mask, other=0)
        bits = (p.to(tl.uint16, bitcast=True).to(tl.uint32) << 16) + r.to(tl.int32).to(tl.uint32, bitcast=True)
        return bits.to(tl.float32, bitcast=True).to(MATH)
    else:
        return load_math(column_ptr(table_ptr, row, 0, NCOLS, P, ALIGNED), offs, mask, FULL, MATH)


@triton.jit
def _store(ptr, offs, x, mask, FULL: tl.constexpr):
    if FULL:
        tl.store(ptr + offs, x)
    else:
        tl.store(ptr + offs, x, mask=mask)


@triton.jit
def store_param(table_ptr, row, offs, x, mask, key, NCOLS: tl.constexpr, EXTRA: tl.constexpr,
                P: tl.constexpr, STORAGE: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr):
    """The block's updated values (math dtype) back to the param, and its master or remainder.
    key: the block's rounding_key."""
    p_ptr = column_ptr(table_ptr, row, 0, NCOLS, P, ALIGNED)
    if STORAGE == MASTER:
        x32 = x.to(tl.float32)
        _store(column_ptr(table_ptr, row, EXTRA, NCOLS, tl.float32, ALIGNED), offs, x32, mask, FULL)
        if P == tl.bfloat16:
            _store(p_ptr, offs, _as_bf16(bf16_round_bits(x32, 0x8000)), mask, FULL)
        else:
            store_rounded(p_ptr, offs, x32, mask, FULL, P)  # fp16: to nearest even, as torch casts
    elif STORAGE == REMAINDER:
        x32 = x.to(tl.float32)
        bits16 = bf16_round_bits(x32, 0x8000)
        all_bits = x32.to(tl.uint32, bitcast=True)
        remainder = (all_bits - (bits16 << 16)).to(tl.int32, bitcast=True)
        remainder = tl.where((all_bits & 0x7FFFFFFF) > 0x7F800000, 0, remainder)
        _store(p_ptr, offs, _as_bf16(bits16), mask, FULL)
        _store(column_ptr(table_ptr, row, EXTRA, NCOLS, tl.int16, ALIGNED), offs, remainder.to(tl.int16), mask,
               FULL)
    elif STORAGE == STOCHASTIC:
        increment = pcg_hash(key ^ offs.to(tl.uint32)) >> 16
        _store(p_ptr, offs, _as_bf16(bf16_round_bits(x.to(tl.float32), increment)), mask, FULL)
    else:
        store_rounded(p_ptr, offs, x, mask, FULL, P)
