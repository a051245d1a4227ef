"""The block walk of the single-pass optimizers (Adam/AdamW, AdaMomentum, DualAdam, Lion): each
program loads its block of p (through the param storage), g (divided by grad_scale) and the
states, hands them to the optimizer's math and stores p and the states back. The CUDA kernels
share csrc/cuda/moment_chunk.cuh the same way.

The kernel convention (fused_optim/triton_backend.py launches every declared `<stem>_step`
operation this way): the kernel of operation `<stem>_step` is `<stem>_kernel` in
triton_kernels/<stem>.py and takes

    table_ptr, blocks_ptr, [global_step_ptr,] grad_scale_ptr, found_inf_ptr,
    the operation's float hyperparameters in declaration order (tl.float64 runtime arguments),
    constexprs: its bool hyperparameters upper-cased (AMSGRAD, DECOUPLED, ...), STORAGE, EXTRA,
    P, S, MATH, HAS_GRAD_SCALE, HAS_FOUND_INF, NCOLS, ALIGNED, BLOCK.

global_step_ptr is there when the operation declares a global_step (DualAdam: one counter for
all params); otherwise each table row holds its tensor's step counter. Its body is one call
of moment_walk with its math function.

The math function is a constexpr argument (a @triton.jit function), called as

    p, s0, s1, s2 = MATH_FN(p, g, s0, s1, s2, t, h0, h1, h2, h3, h4, h5, F0, F1, F2, S, MATH)

on registers of the math dtype: s0.. the states in table order (as stored; the ones a call
lacks are stand-ins, returned unchanged), t the step this update takes (fp64), h0.. the
kernel's float hyperparameters in declaration order (fp64 scalars; unused slots 0.0), F0.. its
bool hyperparameters in declaration order (unused: False). It forms its per-tensor scalars
from t and the hyperparameters in fp64 (the launch disables fp contraction, so they round as
python rounds them) and mirrors its reference statement by statement. Slots rather than
tuples: triton 3.2 (MIN_TRITON) cannot pass tuples between jit functions.
"""
import triton
import triton.language as tl

from .multi_tensor import active_numel, block_coords, column_ptr, load_math, step_of, store_rounded, unscaled
from .param_storage import load_param, rounding_key, store_param


@triton.jit
def _state_ptr(table_ptr, row, k: tl.constexpr, NCOLS: tl.constexpr, S: tl.constexpr, ALIGNED: tl.constexpr):
    return column_ptr(table_ptr, row, 2 + k, NCOLS, S, ALIGNED)


@triton.jit
def _walk_block(table_ptr, row, offs, mask, grad_scale_ptr, key, t, h0, h1, h2, h3, h4, h5,
                MATH_FN: tl.constexpr, STATES: tl.constexpr, F0: tl.constexpr, F1: tl.constexpr,
                F2: tl.constexpr, STORAGE: tl.constexpr, EXTRA: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
                MATH: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, NCOLS: tl.constexpr, ALIGNED: tl.constexpr,
                FULL: tl.constexpr):
    p = load_param(table_ptr, row, offs, mask, NCOLS, EXTRA, P, MATH, STORAGE, ALIGNED, FULL)
    g_ptr = column_ptr(table_ptr, row, 1, NCOLS, P, ALIGNED)
    g = unscaled(load_math(g_ptr, offs, mask, FULL, MATH), grad_scale_ptr, HAS_GRAD_SCALE, MATH)
    s0 = load_math(_state_ptr(table_ptr, row, 0, NCOLS, S, ALIGNED), offs, mask, FULL, MATH)
    s1 = s0
    s2 = s0
    if STATES >= 2:
        s1 = load_math(_state_ptr(table_ptr, row, 1, NCOLS, S, ALIGNED), offs, mask, FULL, MATH)
        s2 = s1
    if STATES >= 3:
        s2 = load_math(_state_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED), offs, mask, FULL, MATH)
    p, s0, s1, s2 = MATH_FN(p, g, s0, s1, s2, t, h0, h1, h2, h3, h4, h5, F0, F1, F2, S, MATH)
    store_param(table_ptr, row, offs, p, mask, key, NCOLS, EXTRA, P, STORAGE, ALIGNED, FULL)
    store_rounded(_state_ptr(table_ptr, row, 0, NCOLS, S, ALIGNED), offs, s0, mask, FULL, S)
    if STATES >= 2:
        store_rounded(_state_ptr(table_ptr, row, 1, NCOLS, S, ALIGNED), offs, s1, mask, FULL, S)
    if STATES >= 3:
        store_rounded(_state_ptr(table_ptr, row, 2, NCOLS, S, ALIGNED), offs, s2, mask, FULL, S)


@triton.jit
def moment_walk(table_ptr, blocks_ptr, global_step_ptr, grad_scale_ptr, found_inf_ptr, h0, h1, h2, h3, h4, h5,
                MATH_FN: tl.constexpr, F0: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr,
                GLOBAL_STEP: tl.constexpr, STORAGE: tl.constexpr, EXTRA: tl.constexpr, P: tl.constexpr,
                S: tl.constexpr, MATH: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                NCOLS: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """One program's block. Table row: p, g, the states, [master/remainder or key: STORAGE,
    param_storage.py], [step unless GLOBAL_STEP], numel. EXTRA is the column after the states,
    so a row holds EXTRA - 2 states (Adam: m, v and, with amsgrad, vmax)."""
    row, start = block_coords(blocks_ptr, BLOCK)
    numel = tl.load(table_ptr + row * NCOLS + (NCOLS - 1))
    if GLOBAL_STEP:
        t = tl.load(global_step_ptr).to(tl.float64) + 1.0
    else:
        t = step_of(table_ptr, row, NCOLS - 2, NCOLS)
    numel = active_numel(numel, found_inf_ptr, HAS_FOUND_INF)
    key = rounding_key(table_ptr, row, start, t, STORAGE, EXTRA, NCOLS)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    # full blocks load and store without a mask (vectorizable); the tensor's last one masks
    if start + BLOCK <= numel:
        _walk_block(table_ptr, row, offs, mask, grad_scale_ptr, key, t, h0, h1, h2, h3, h4, h5, MATH_FN, EXTRA - 2,
                    F0, F1, F2, STORAGE, EXTRA, P, S, MATH, HAS_GRAD_SCALE, NCOLS, ALIGNED, True)
    else:
        _walk_block(table_ptr, row, offs, mask, grad_scale_ptr, key, t, h0, h1, h2, h3, h4, h5, MATH_FN, EXTRA - 2,
                    F0, F1, F2, STORAGE, EXTRA, P, S, MATH, HAS_GRAD_SCALE, NCOLS, ALIGNED, False)
