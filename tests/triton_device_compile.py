"""Compiles every Triton kernel variant the backend launches, for an sm_90 GPU, on a machine
without one (run by tests/test_triton_backend.py in a subprocess: the suite itself runs the
kernels under TRITON_INTERPRET=1, whose jit functions cannot be compiled). The interpreter
runs numpy on the host and accepts code the GPU compiler rejects (types, bitcasts, shifts);
this catches that, and checks that aligned fp32 tables get 16-byte vector loads.
Prints one line per kernel; exits nonzero on the first failure."""
import inspect
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fused_optim.triton_kernels import adai, adai_clip, adam, adamomentum, dualadam  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
F64 = "fp64"


def compile_ptx(fn, runtime, constexprs):
    signature = dict(runtime, **{k: "constexpr" for k in constexprs})
    if "constexprs" in inspect.signature(ASTSource.__init__).parameters:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    else:  # triton 3.2 (torch 2.6's) names them `constants`
        source = ASTSource(fn=fn, signature=signature, constants=constexprs)
    kernel = triton.compile(source, target=TARGET,
                            options={"num_warps": 4, "enable_fp_fusion": False})
    return kernel.asm["ptx"]


def moments(mode, p, extra, ncols):
    """The constexprs the moment kernels share (EXTRA: the master/remainder/key column)."""
    return dict(NCOLS=ncols, MODE=mode, EXTRA=extra, P=p, S=tl.float32, MATH=tl.float32, HAS_GRAD_SCALE=True,
                HAS_FOUND_INF=True, ALIGNED=True, BLOCK=1024)


def main() -> None:
    scaling = {"grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32"}
    table = {"table_ptr": "*i64", "blocks_ptr": "*i64"}
    adam_args = dict(table, **scaling, lr=F64, beta1=F64, beta2=F64, one_minus_beta1=F64, one_minus_beta2=F64,
                     eps=F64, weight_decay=F64, decay=F64)
    for p, mode in ((tl.float32, 0), (tl.bfloat16, 0), (tl.bfloat16, 1), (tl.bfloat16, 2), (tl.bfloat16, 3),
                    (tl.float16, 1)):
        ncols = 6 + (mode != 0)
        ptx = compile_ptx(adam.adam_kernel, adam_args, dict(moments(mode, p, 4, ncols), AMSGRAD=False, MAXIMIZE=False,
                                                            APPLY_DECAY=True, APPLY_L2=False))
        loads = len(re.findall(r"ld\.global\.v4", ptx))
        print(f"adam {p} mode {mode}: {loads} 16-byte loads")
        if p == tl.float32 and loads == 0:
            sys.exit("adam fp32 with ALIGNED=True has no 16-byte vector loads")
        compile_ptx(adamomentum.adamomentum_kernel, adam_args,
                    dict(moments(mode, p, 5, ncols + 1), AMSGRAD=True, RECTIFY=True, APPLY_DECAY=False, APPLY_L2=True))
        print(f"adamomentum {p} mode {mode} (amsgrad): ok")
        compile_ptx(dualadam.dualadam_kernel,
                    dict(table, global_step_ptr="*fp64", **scaling, lr=F64, beta1=F64, beta2=F64, one_minus_beta1=F64,
                         one_minus_beta2=F64, eps=F64, decay=F64, switch_rate=F64),
                    dict(moments(mode, p, 4, ncols - 1), APPLY_DECAY=True))
        print(f"dualadam {p} mode {mode}: ok")
        compile_ptx(adai.adai_second_moment_kernel,
                    dict(table, partials_ptr="*fp64", grad_scale_ptr="*fp32", beta2=F64, one_minus_beta2=F64,
                         weight_decay=F64),
                    dict(NCOLS=ncols - 1, MODE=mode, EXTRA=3, P=p, S=tl.float32, MATH=tl.float32, APPLY_L2=True,
                         HAS_GRAD_SCALE=True, ALIGNED=True, BLOCK=1024))
        compile_ptx(adai.adai_update_kernel,
                    dict(table, vbar_ptr="*fp64", **scaling, lr=F64, beta0=F64, beta2=F64, one_minus_beta2=F64,
                         one_minus_eps=F64, weight_decay=F64, decay=F64),
                    dict(moments(mode, p, 5, ncols + 1), B=tl.float32, APPLY_DECAY=False, APPLY_L2=True))
        print(f"adai passes {p} mode {mode}: ok")
    for norm in range(5):
        compile_ptx(adai_clip.adai_clip_sums_kernel,
                    dict(table, partials_ptr="*fp64", grad_scale_ptr="*fp32", beta2=F64, l2_weight_decay=F64,
                         norm_type=F64),
                    dict(NCOLS=6, MODE=1, EXTRA=3, P=tl.bfloat16, S=tl.float32, MATH=tl.float32, NORM=norm,
                         APPLY_L2=True, HAS_GRAD_SCALE=True, ALIGNED=True, BLOCK=1024))
        compile_ptx(adai_clip.clip_totals_kernel, {"partials_ptr": "*fp64", "n": "i32", "out_ptr": "*fp64"},
                    dict(NORM=norm, RBLOCK=1024))
        print(f"adai clip sums and totals, norm kind {norm}: ok")
    compile_ptx(adai.sum_partials_kernel, {"partials_ptr": "*fp64", "n": "i32", "out_ptr": "*fp64"}, {"RBLOCK": 1024})
    print("all kernels compiled for sm_90")


if __name__ == "__main__":
    main()
