"""Adai (adaptive inertia), two launches around the global mean of vhat. Mirrors
fused_optim/reference/adai.py (adai_second_moment, adai_inertia_ratio, adai_update) and
csrc/include/fused_optim/math/adai.h.

The pair has the reference pair's effect, split differently: pass 1 computes v_new and sums
vhat = v_new / bc2 WITHOUT storing v (reads g and v, plus p for L2: 8 B/element, 12 B with L2,
fp32); pass 2 recomputes v_new from the same inputs and does the whole element update (reads
p, g, m, v, beta1_prod, writes p, m, v, beta1_prod: 36 B). 44 B per element in all. (The CPU
backend carries sum(v) between steps to read only g in pass 1; a GPU pass 1 is short and
bandwidth-bound either way, and not carrying state keeps this backend free of host-side
bookkeeping that would have to follow every external write to v.)

The sum is deterministic: each block reduces its lanes in fp64 with tl.reduce (a fixed tree for
a fixed BLOCK and num_warps) into its own slot, and one more program (sum_partials_kernel, a
second, tiny launch) adds the slots in a fixed order. No atomics: two runs on the same inputs
are bitwise identical.
"""
import triton
import triton.language as tl

from .param_storage import load_param, rounding_key, store_param
from .multi_tensor import (as_stored, block_coords, column_ptr, div, active_numel, load_math, pow_int,
                           step_of, store_rounded, unscaled)


@triton.jit
def adai_effective_grad(g, p, weight_decay, APPLY_L2: tl.constexpr):
    """Coupled L2: g_eff = g + wd p (p.grad itself is never modified)."""
    if APPLY_L2:
        return g + weight_decay * p
    else:
        return g


@triton.jit
def adai_vhat(p, g, v, beta2, one_minus_beta2, weight_decay, bc2, S: tl.constexpr, MATH: tl.constexpr,
              APPLY_L2: tl.constexpr):
    """Reference: adai_second_moment's element: v = beta2 v + (1 - beta2) g_eff^2 as stored,
    and vhat = v / bc2. Returns (v, vhat)."""
    ge = adai_effective_grad(g, p, weight_decay, APPLY_L2)
    v = as_stored(beta2 * v + one_minus_beta2 * ge * ge, S, MATH)
    return v, div(v, bc2, MATH)


@triton.jit
def adai_inertia_ratio(vhat, vbar, MATH: tl.constexpr):
    """Reference: adai_inertia_ratio. vbar == 0 means every counted vhat is 0: the ratio is 1
    (OURS; the authors' code gives NaN)."""
    # the divisor is made 1 where it is 0 only so the unused quotient is not a 0/0 NaN
    return tl.where(vbar == 0.0, 1.0, div(vhat, tl.where(vbar == 0.0, 1.0, vbar), MATH))


@triton.jit
def adai_math(p, g, m, v, beta1_prod, lr, beta0, beta2, one_minus_beta2, one_minus_eps, weight_decay, decay,
              bc2, vbar, S: tl.constexpr, B: tl.constexpr, MATH: tl.constexpr, APPLY_DECAY: tl.constexpr,
              APPLY_L2: tl.constexpr):
    """Reference: adai_second_moment's v update followed by adai_update, statement by statement,
    on registers of the math dtype."""
    ge = adai_effective_grad(g, p, weight_decay, APPLY_L2)  # p from before this step's decay
    if APPLY_DECAY:
        p = p * decay
    v, vhat = adai_vhat(p, ge, v, beta2, one_minus_beta2, weight_decay, bc2, S, MATH, False)
    beta1 = 1.0 - adai_inertia_ratio(vhat, vbar, MATH) * beta0
    # clamp_(0, 1 - eps) with comparisons, so a NaN stays NaN as with torch.clamp
    beta1 = tl.where(beta1 < 0.0, 0.0, beta1)
    beta1 = tl.where(beta1 > one_minus_eps, one_minus_eps, beta1)
    beta1_prod = as_stored(beta1_prod * beta1, B, MATH)
    m = as_stored(m * beta1 + (1.0 - beta1) * ge, S, MATH)
    p = p - lr * div(m, 1.0 - beta1_prod, MATH)
    return p, m, v, beta1_prod


@triton.jit
def _fp64_sum(x):
    """Sum of a block in a fixed order. tl.reduce with tl.sum's own combiner instead of tl.sum
    itself: tl.sum is a @triton.jit function of triton that the interpreter cannot run when
    triton was imported before TRITON_INTERPRET was set, while tl.reduce is a builtin; and the
    interpreter recognizes this combiner and sums with numpy instead of a python loop."""
    return tl.reduce(x, 0, tl.standard._sum_combine)


@triton.jit
def _adai_partial(table_ptr, row, offs, mask, grad_scale_ptr, beta2, one_minus_beta2, weight_decay, bc2,
                  NCOLS: tl.constexpr, STORAGE: tl.constexpr, EXTRA: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
                  MATH: tl.constexpr, APPLY_L2: tl.constexpr,
                  HAS_GRAD_SCALE: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr):
    """This block's fp64 sum of vhat_new."""
    g_ptr = column_ptr(table_ptr, row, 1, NCOLS, P, ALIGNED)
    v_ptr = column_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED)
    g = unscaled(load_math(g_ptr, offs, mask, FULL, MATH), grad_scale_ptr, HAS_GRAD_SCALE, MATH)
    v = load_math(v_ptr, offs, mask, FULL, MATH)
    if APPLY_L2:
        p = load_param(table_ptr, row, offs, mask, NCOLS, EXTRA, P, MATH, STORAGE, ALIGNED, FULL)
    else:
        p = g  # unused: no L2 term, and p is not read (4 B/element saved)
    v, vhat = adai_vhat(p, g, v, beta2, one_minus_beta2, weight_decay, bc2, S, MATH, APPLY_L2)
    return _fp64_sum(tl.where(mask, vhat.to(tl.float64), 0.0))


@triton.jit
def adai_second_moment_kernel(table_ptr, blocks_ptr, partials_ptr, grad_scale_ptr, beta2: tl.float64,
                              one_minus_beta2: tl.float64, weight_decay: tl.float64, NCOLS: tl.constexpr,
                              STORAGE: tl.constexpr, EXTRA: tl.constexpr,
                              P: tl.constexpr, S: tl.constexpr, MATH: tl.constexpr, APPLY_L2: tl.constexpr,
                              HAS_GRAD_SCALE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 1. Table row: p, g, v, [master/remainder], step, numel. Writes this block's fp64 sum of vhat."""
    row, start = block_coords(blocks_ptr, BLOCK)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    t = step_of(table_ptr, row, NCOLS - 2, NCOLS)
    bc2 = (1.0 - pow_int(beta2, t)).to(MATH)  # reference: adai_bias_correction2
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    if start + BLOCK <= numel:
        partial = _adai_partial(table_ptr, row, offs, mask, grad_scale_ptr, beta2.to(MATH), one_minus_beta2.to(MATH),
                                weight_decay.to(MATH), bc2, NCOLS, STORAGE, EXTRA, P, S, MATH, APPLY_L2, HAS_GRAD_SCALE,
                                ALIGNED,
                                True)
    else:
        partial = _adai_partial(table_ptr, row, offs, mask, grad_scale_ptr, beta2.to(MATH), one_minus_beta2.to(MATH),
                                weight_decay.to(MATH), bc2, NCOLS, STORAGE, EXTRA, P, S, MATH, APPLY_L2, HAS_GRAD_SCALE,
                                ALIGNED,
                                False)
    tl.store(partials_ptr + tl.program_id(0), partial)


@triton.jit
def fixed_order_sum(base, n, RBLOCK: tl.constexpr):
    """Sum of slots [0, n) of base: lane j accumulates slots j, j + RBLOCK, ... in order, then a
    fixed tree over the lanes. The order depends only on n."""
    lanes = tl.full((RBLOCK,), 0.0, tl.float64)
    first = n * 0
    while first < n:  # a while loop: the interpreter cannot range() over a runtime scalar
        offs = first + tl.arange(0, RBLOCK)
        lanes += tl.load(base + offs, mask=offs < n, other=0.0)
        first += RBLOCK
    return _fp64_sum(lanes)


@triton.jit(do_not_specialize=["n"])  # n == 1 would otherwise become a constant the loop cannot carry
def sum_partials_kernel(partials_ptr, n, out_ptr, RBLOCK: tl.constexpr):
    """One program: the fixed-order sum of the n block partials."""
    tl.store(out_ptr, fixed_order_sum(partials_ptr, n, RBLOCK))


@triton.jit
def _adai_block(table_ptr, row, offs, mask, grad_scale_ptr, key, lr, beta0, beta2, one_minus_beta2,
                one_minus_eps, weight_decay, decay, bc2, vbar, NCOLS: tl.constexpr, STORAGE: tl.constexpr,
                EXTRA: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
                B: tl.constexpr, MATH: tl.constexpr, APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr,
                HAS_GRAD_SCALE: tl.constexpr, ALIGNED: tl.constexpr, FULL: tl.constexpr):
    g_ptr = column_ptr(table_ptr, row, 1, NCOLS, P, ALIGNED)
    m_ptr = column_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED)
    v_ptr = column_ptr(table_ptr, row, 3, NCOLS, S, ALIGNED)
    b_ptr = column_ptr(table_ptr, row, 4, NCOLS, B, ALIGNED)
    p = load_param(table_ptr, row, offs, mask, NCOLS, EXTRA, P, MATH, STORAGE, ALIGNED, FULL)
    g = unscaled(load_math(g_ptr, offs, mask, FULL, MATH), grad_scale_ptr, HAS_GRAD_SCALE, MATH)
    m = load_math(m_ptr, offs, mask, FULL, MATH)
    v = load_math(v_ptr, offs, mask, FULL, MATH)
    beta1_prod = load_math(b_ptr, offs, mask, FULL, MATH)
    p, m, v, beta1_prod = adai_math(p, g, m, v, beta1_prod, lr, beta0, beta2, one_minus_beta2, one_minus_eps,
                                    weight_decay, decay, bc2, vbar, S, B, MATH, APPLY_DECAY, APPLY_L2)
    store_param(table_ptr, row, offs, p, mask, key, NCOLS, EXTRA, P, STORAGE, ALIGNED, FULL)
    store_rounded(m_ptr, offs, m, mask, FULL, S)
    store_rounded(v_ptr, offs, v, mask, FULL, S)
    store_rounded(b_ptr, offs, beta1_prod, mask, FULL, B)


@triton.jit
def adai_update_kernel(table_ptr, blocks_ptr, vbar_ptr, grad_scale_ptr, found_inf_ptr, lr: tl.float64,
                       beta0: tl.float64, beta2: tl.float64, one_minus_beta2: tl.float64,
                       one_minus_eps: tl.float64, weight_decay: tl.float64, decay: tl.float64,
                       NCOLS: tl.constexpr, STORAGE: tl.constexpr, EXTRA: tl.constexpr, P: tl.constexpr,
                       S: tl.constexpr, B: tl.constexpr,
                       MATH: tl.constexpr, APPLY_DECAY: tl.constexpr, APPLY_L2: tl.constexpr,
                       HAS_GRAD_SCALE: tl.constexpr,
                       HAS_FOUND_INF: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2. Table row: p, g, m, v, beta1_prod, [master/remainder or key], step, numel. vbar is read on the device.
    beta1_prod has its own dtype B: in bf16 it cannot hold values in (1 - 2^-9, 1), so with
    beta1 near 1 - eps = 0.999 it rounds to 1 and 1 - beta1_prod is 0 (inf update); callers
    with bf16 moments should keep it fp32."""
    row, start = block_coords(blocks_ptr, BLOCK)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    t = step_of(table_ptr, row, NCOLS - 2, NCOLS)
    bc2 = (1.0 - pow_int(beta2, t)).to(MATH)  # reference: adai_bias_correction2
    vbar = tl.load(vbar_ptr).to(MATH)  # reference: vbar.to(vhat.dtype)
    numel = active_numel(numel, found_inf_ptr, HAS_FOUND_INF)
    key = rounding_key(table_ptr, row, start, t, STORAGE, EXTRA, NCOLS)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    if start + BLOCK <= numel:
        _adai_block(table_ptr, row, offs, mask, grad_scale_ptr, key, lr.to(MATH), beta0.to(MATH), beta2.to(MATH),
                    one_minus_beta2.to(MATH), one_minus_eps.to(MATH), weight_decay.to(MATH), decay.to(MATH), bc2,
                    vbar, NCOLS, STORAGE, EXTRA, P, S, B, MATH, APPLY_DECAY, APPLY_L2, HAS_GRAD_SCALE, ALIGNED, True)
    else:
        _adai_block(table_ptr, row, offs, mask, grad_scale_ptr, key, lr.to(MATH), beta0.to(MATH), beta2.to(MATH),
                    one_minus_beta2.to(MATH), one_minus_eps.to(MATH), weight_decay.to(MATH), decay.to(MATH), bc2,
                    vbar, NCOLS, STORAGE, EXTRA, P, S, B, MATH, APPLY_DECAY, APPLY_L2, HAS_GRAD_SCALE, ALIGNED, False)
