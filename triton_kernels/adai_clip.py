"""Adai's pass 1 when max_grad_norm clips the grads (reference: adai_clip_sums; CUDA and CPU
mirrors: csrc/include/fused_optim/math/clip.h). One read of g and v (and p for coupled L2:
8 B/element, 12 with L2, fp32) yields both what the clip coefficient needs (this group's part of
the grad norm) and what Adai's mean needs (its sum of vhat as a quadratic c0 + c1 c + c2 c^2 in
the coefficient c, since v_new = beta2 v + (1 - beta2) (c g + wd p)^2). Replaces a norm pass
over g plus the plain pass 1 over g and v. Sums in fp64, per block in slots, then a fixed-order
program per quantity (no atomics: reruns are bitwise identical).
"""
import triton
import triton.language as tl

from .adai import _fp64_sum, fixed_order_sum
from .multi_tensor import block_coords, column_ptr, load_math, pow_int, step_of, unscaled
from .param_storage import load_param

# How an element enters the norm part: the NORM constexpr (same codes as math/clip.h's NormKind)
NORM_TWO = tl.constexpr(0)
NORM_ONE = tl.constexpr(1)
NORM_POWER = tl.constexpr(2)
NORM_MAX = tl.constexpr(3)
NORM_MIN = tl.constexpr(4)


def norm_kind(norm_type: float) -> int:
    """The NORM constexpr of a norm type, as a plain int."""
    if norm_type == 2.0:
        kind = NORM_TWO
    elif norm_type == 1.0:
        kind = NORM_ONE
    elif norm_type == float("inf"):
        kind = NORM_MAX
    elif norm_type == float("-inf"):
        kind = NORM_MIN
    else:
        kind = NORM_POWER
    return kind.value


@triton.jit
def _extremum(a, b, NORM: tl.constexpr):
    """max (NORM_MAX) or min of two parts; a NaN wins, as torch's max/min propagate it."""
    if NORM == NORM_MAX:
        e = tl.where(a > b, a, b)
    else:
        e = tl.where(a < b, a, b)
    return tl.where((a != a) | (b != b), a + b, e)


@triton.jit
def _max_combine(a, b):
    return _extremum(a, b, NORM_MAX)


@triton.jit
def _min_combine(a, b):
    return _extremum(a, b, NORM_MIN)


@triton.jit
def _norm_part(g, mask, q, NORM: tl.constexpr):
    """This block's part of the norm from its fp64 grads (masked lanes add nothing)."""
    a = tl.abs(g)
    if NORM == NORM_TWO:
        return _fp64_sum(tl.where(mask, g * g, 0.0))
    elif NORM == NORM_ONE:
        return _fp64_sum(tl.where(mask, a, 0.0))
    elif NORM == NORM_POWER:
        # |g|^q as 2^(q log2 |g|): no fp64 pow the interpreter runs; |g| = 0 gives 2^-inf = 0
        return _fp64_sum(tl.where(mask, tl.exp2(q * tl.log2(a)), 0.0))
    elif NORM == NORM_MAX:
        return tl.reduce(tl.where(mask, a, 0.0), 0, _max_combine)
    else:
        return tl.reduce(tl.where(mask, a, float("inf")), 0, _min_combine)


@triton.jit
def _clip_block(table_ptr, row, offs, mask, grad_scale_ptr, NCOLS: tl.constexpr, STORAGE: tl.constexpr,
                EXTRA: tl.constexpr, P: tl.constexpr,
                S: tl.constexpr, MATH: tl.constexpr, APPLY_L2: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                ALIGNED: tl.constexpr, FULL: tl.constexpr):
    """(g as fp64, sum v, sum g p, sum p^2) of one block; g divided by the scale in the math
    dtype as the update divides it (products of two fp32 values are exact in fp64)."""
    g = unscaled(load_math(column_ptr(table_ptr, row, 1, NCOLS, P, ALIGNED), offs, mask, FULL, MATH),
                 grad_scale_ptr, HAS_GRAD_SCALE, MATH).to(tl.float64)
    v = load_math(column_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED), offs, mask, FULL, MATH).to(tl.float64)
    v_sum = _fp64_sum(tl.where(mask, v, 0.0))
    if APPLY_L2:
        p = load_param(table_ptr, row, offs, mask, NCOLS, EXTRA, P, MATH, STORAGE, ALIGNED, FULL).to(tl.float64)
        gp = _fp64_sum(tl.where(mask, g * p, 0.0))
        pp = _fp64_sum(tl.where(mask, p * p, 0.0))
    else:
        gp = v_sum * 0.0
        pp = v_sum * 0.0
    return g, v_sum, gp, pp


@triton.jit
def adai_clip_sums_kernel(table_ptr, blocks_ptr, partials_ptr, grad_scale_ptr, beta2: tl.float64,
                          l2_weight_decay: tl.float64, norm_type: tl.float64, NCOLS: tl.constexpr,
                          STORAGE: tl.constexpr, EXTRA: tl.constexpr,
                          P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, NORM: tl.constexpr,
                          APPLY_L2: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, ALIGNED: tl.constexpr,
                          BLOCK: tl.constexpr):
    """Table row: p, g, v, [master/remainder], step, numel. Writes this block's [norm part, c0, c1, c2] into slots
    k * nblocks + block (reference: adai_clip_sums; weights from the block's tensor)."""
    row, start = block_coords(blocks_ptr, BLOCK)
    nblocks = tl.num_programs(0)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    w = 1.0 / (1.0 - pow_int(beta2, step_of(table_ptr, row, NCOLS - 2, NCOLS)))  # 1 / bc2, fp64
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    if start + BLOCK <= numel:
        g, v_sum, gp, pp = _clip_block(table_ptr, row, offs, mask, grad_scale_ptr, NCOLS, STORAGE, EXTRA, P, S, MATH,
                                       APPLY_L2,
                                       HAS_GRAD_SCALE, ALIGNED, True)
    else:
        g, v_sum, gp, pp = _clip_block(table_ptr, row, offs, mask, grad_scale_ptr, NCOLS, STORAGE, EXTRA, P, S, MATH,
                                       APPLY_L2,
                                       HAS_GRAD_SCALE, ALIGNED, False)
    gg = _fp64_sum(tl.where(mask, g * g, 0.0))
    k = 1.0 - beta2
    wd = l2_weight_decay
    pid = tl.program_id(0)
    tl.store(partials_ptr + pid, _norm_part(g, mask, norm_type, NORM))
    tl.store(partials_ptr + nblocks + pid, w * (beta2 * v_sum + k * wd * wd * pp))
    tl.store(partials_ptr + 2 * nblocks + pid, w * (2.0 * k * wd * gp))
    tl.store(partials_ptr + 3 * nblocks + pid, w * (k * gg))


@triton.jit
def _extremum_total(base, n, NORM: tl.constexpr, RBLOCK: tl.constexpr):
    """The max (NORM_MAX) or min of slots [0, n) of base."""
    if NORM == NORM_MAX:
        lanes = tl.full((RBLOCK,), 0.0, tl.float64)
    else:
        lanes = tl.full((RBLOCK,), float("inf"), tl.float64)
    first = n * 0
    while first < n:
        offs = first + tl.arange(0, RBLOCK)
        if NORM == NORM_MAX:
            lanes = _extremum(lanes, tl.load(base + offs, mask=offs < n, other=0.0), NORM)
        else:
            lanes = _extremum(lanes, tl.load(base + offs, mask=offs < n, other=float("inf")), NORM)
        first += RBLOCK
    if NORM == NORM_MAX:
        return tl.reduce(lanes, 0, _max_combine)
    else:
        return tl.reduce(lanes, 0, _min_combine)


@triton.jit(do_not_specialize=["n"])
def clip_totals_kernel(partials_ptr, n, out_ptr, NORM: tl.constexpr, RBLOCK: tl.constexpr):
    """Program k (of 4) totals slots [k n, (k + 1) n) into out[k]: sums, except the norm part
    of the inf norms (a max or min). The order depends only on n."""
    k = tl.program_id(0)
    base = partials_ptr + k * n
    if NORM == NORM_MAX or NORM == NORM_MIN:
        if k == 0:
            total = _extremum_total(base, n, NORM, RBLOCK)
        else:
            total = fixed_order_sum(base, n, RBLOCK)
    else:
        total = fixed_order_sum(base, n, RBLOCK)
    tl.store(out_ptr + k, total)
