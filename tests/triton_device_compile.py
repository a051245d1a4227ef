"""Compiles every Triton kernel variant the backend launches, for an sm_90 GPU, on a machine
without one (run by tests/test_triton_backend.py in a subprocess: the suite itself runs the
kernels under TRITON_INTERPRET=1, whose jit functions cannot be compiled). The interpreter
runs numpy on the host and accepts code the GPU compiler rejects (types, bitcasts, shifts);
this catches that, and checks the PTX: aligned fp32 tables get 16-byte vector loads, and no
multiply-add is contracted into an fma (the kernels mirror separately rounded statements, the
fp64 scalars 1 - beta1, 1 - lr wd formed on the device included).

The single-pass kernels are found and called as the backend finds and calls them: every
declared `<stem>_step` operation (fused_optim.operations) with a kernel `<stem>_kernel` in
triton_kernels/<stem>.py, its runtime arguments and constexprs by the convention of
triton_kernels/moment_walk.py (checked against the kernel's own argument names).
Prints one line per kernel; exits nonzero on the first failure."""
import importlib
import importlib.util
import inspect
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fused_optim import operations  # noqa: E402
from fused_optim._param_storage import MASTER, PLAIN, REMAINDER, STOCHASTIC  # noqa: E402
from fused_optim.triton_kernels import adai, adai_clip  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
F64 = "fp64"
# (param dtype, storage): every storage mode, on the dtypes the optimizers use it with
COMBOS = ((tl.float32, PLAIN), (tl.bfloat16, PLAIN), (tl.bfloat16, MASTER), (tl.bfloat16, REMAINDER),
          (tl.bfloat16, STOCHASTIC), (tl.float16, MASTER))


def compile_ptx(fn, runtime, constexprs, contracted_ok=False):
    signature = dict(runtime, **{k: "constexpr" for k in constexprs})
    if "constexprs" in inspect.signature(ASTSource.__init__).parameters:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    else:  # triton 3.2 (torch 2.6's) names them `constants`
        source = ASTSource(fn=fn, signature=signature, constants=constexprs)
    kernel = triton.compile(source, target=TARGET,
                            options={"num_warps": 4, "enable_fp_fusion": False})
    ptx = kernel.asm["ptx"]
    if not contracted_ok and re.search(r"\bfma\.", ptx):
        sys.exit(f"{fn.__name__} {constexprs}: the PTX has an fma (fp contraction)")
    return ptx


def storage_columns(storage, roles, has_steps):
    """(EXTRA, NCOLS) of a table of `roles` role columns: the roles, the master/remainder or key
    column (EXTRA), the step, numel."""
    return roles, roles + (storage != PLAIN) + has_steps + 1


def single_pass_kernels():
    """(operation, kernel) of every single-pass operation the backend launches."""
    for name, declaration in operations.OPERATIONS.items():
        if not name.endswith("_step"):
            continue
        stem = name[: -len("_step")]
        if importlib.util.find_spec(f"fused_optim.triton_kernels.{stem}") is None:
            continue  # not served by the triton backend
        module = importlib.import_module(f"fused_optim.triton_kernels.{stem}")
        yield declaration, getattr(module, f"{stem}_kernel")


def compile_single_pass(declaration, kernel, p, storage, flag_value):
    schema = torch._C.parse_schema(f"x::{declaration.name}{declaration.signature}")
    types = {a.name: str(a.type) for a in schema.arguments}
    runtime = {"table_ptr": "*i64", "blocks_ptr": "*i64"}
    if "global_step" in declaration.scalars:
        runtime["global_step_ptr"] = "*fp64"
    runtime.update(grad_scale_ptr="*fp32", found_inf_ptr="*fp32")
    flags = {}
    for h in declaration.hyperparameters:
        if types[h] == "bool":
            flags[h.upper()] = flag_value
        else:
            runtime[h] = F64
    extra, ncols = storage_columns(storage, 2 + len(declaration.state_lists()), "steps" in declaration.lists)
    constexprs = dict(flags, STORAGE=storage, EXTRA=extra, P=p, S=tl.float32, MATH=tl.float32, HAS_GRAD_SCALE=True,
                      HAS_FOUND_INF=True, NCOLS=ncols, ALIGNED=True, BLOCK=1024)
    expected = list(runtime) + list(constexprs)
    if list(kernel.arg_names) != expected:
        sys.exit(f"{kernel.fn.__name__}: arguments {list(kernel.arg_names)}, "
                 f"the convention (triton_kernels/moment_walk.py) gives {expected}")
    return compile_ptx(kernel, runtime, constexprs)


def main() -> None:
    table = {"table_ptr": "*i64", "blocks_ptr": "*i64"}
    scaling = {"grad_scale_ptr": "*fp32", "found_inf_ptr": "*fp32"}
    for declaration, kernel in single_pass_kernels():
        for p, storage in COMBOS:
            for flag_value in ((True, False) if (p, storage) == (tl.float32, PLAIN) else (True,)):
                ptx = compile_single_pass(declaration, kernel, p, storage, flag_value)
                loads = len(re.findall(r"ld\.global\.v4", ptx))
                print(f"{declaration.name} {p} storage {storage} flags {flag_value}: {loads} 16-byte loads")
                if p == tl.float32 and loads == 0:
                    sys.exit(f"{declaration.name} fp32 with ALIGNED=True has no 16-byte vector loads")
    for p, storage in COMBOS:
        extra, ncols = storage_columns(storage, 3, True)
        compile_ptx(adai.adai_second_moment_kernel,
                    dict(table, partials_ptr="*fp64", grad_scale_ptr="*fp32", beta2=F64, one_minus_beta2=F64,
                         weight_decay=F64),
                    dict(NCOLS=ncols, STORAGE=storage, EXTRA=extra, P=p, S=tl.float32, MATH=tl.float32,
                         APPLY_L2=True, HAS_GRAD_SCALE=True, ALIGNED=True, BLOCK=1024))
        extra, ncols = storage_columns(storage, 5, True)
        compile_ptx(adai.adai_update_kernel,
                    dict(table, vbar_ptr="*fp64", **scaling, lr=F64, beta0=F64, beta2=F64, one_minus_beta2=F64,
                         one_minus_eps=F64, weight_decay=F64, decay=F64),
                    dict(NCOLS=ncols, STORAGE=storage, EXTRA=extra, P=p, S=tl.float32, B=tl.float32,
                         MATH=tl.float32, APPLY_DECAY=False, APPLY_L2=True, HAS_GRAD_SCALE=True, HAS_FOUND_INF=True,
                         ALIGNED=True, BLOCK=1024))
        print(f"adai passes {p} storage {storage}: ok")
    extra, ncols = storage_columns(MASTER, 3, True)
    for norm in range(5):
        compile_ptx(adai_clip.adai_clip_sums_kernel,
                    dict(table, partials_ptr="*fp64", grad_scale_ptr="*fp32", beta2=F64, l2_weight_decay=F64,
                         norm_type=F64),
                    dict(NCOLS=ncols, STORAGE=MASTER, EXTRA=extra, P=tl.bfloat16, S=tl.float32, MATH=tl.float32,
                         NORM=norm, APPLY_L2=True, HAS_GRAD_SCALE=True, ALIGNED=True, BLOCK=1024),
                    # |g|^q of the power norms: libdevice's exp2/log2, fmas of their own
                    contracted_ok=norm == adai_clip.NORM_POWER.value)
        compile_ptx(adai_clip.clip_totals_kernel, {"partials_ptr": "*fp64", "n": "i32", "out_ptr": "*fp64"},
                    dict(NORM=norm, RBLOCK=1024))
        print(f"adai clip sums and totals, norm kind {norm}: ok")
    compile_ptx(adai.sum_partials_kernel, {"partials_ptr": "*fp64", "n": "i32", "out_ptr": "*fp64"}, {"RBLOCK": 1024})
    print("all kernels compiled for sm_90")


if __name__ == "__main__":
    main()
