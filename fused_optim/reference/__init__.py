"""Readable pure-torch implementations of the update rules in the spec.

They are the "torch" backend (any device, any float dtype: fp32 math for bf16/fp16 params,
fp64 for fp64), the fallback wherever a native backend cannot serve, and the test oracle
(run in fp64). Each function takes one param group's tensor lists and updates them in place;
the native kernels in csrc/include/fused_optim/math/ mirror them statement by statement.
"""
from .adai import adai_bias_correction2, adai_clip_sums, adai_inertia_ratio, adai_second_moment, adai_update
from .adam import adam_scalars, adam_step
from .adamomentum import adamomentum_scalars, adamomentum_step
from .dualadam import dualadam_blend_weight, dualadam_step

__all__ = [
    "adai_bias_correction2",
    "adai_clip_sums",
    "adai_inertia_ratio",
    "adai_second_moment",
    "adai_update",
    "adam_scalars",
    "adam_step",
    "adamomentum_scalars",
    "adamomentum_step",
    "dualadam_blend_weight",
    "dualadam_step",
]
