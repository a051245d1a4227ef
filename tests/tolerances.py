"""Every tolerance of the parity tests, with the reason for its size. Comparisons are
against the fp64 reference; (rtol, atol) as in torch.testing.assert_close."""
import torch

# fp64 params: the math runs in fp64 on both sides; only the order of a few operations can
# differ (e.g. a*b+c vs fused forms), a few ulps of 2.2e-16 per step over 6 steps.
FP64 = (1e-12, 1e-15)

# fp32 params and states against fp64: each operation rounds at 6e-8 relative; a step is ~15
# operations and errors compound over 6 steps, so ~1e-6 relative is the expected size, 1e-5
# leaves margin. atol covers elements that pass through zero (m changes sign).
FP32 = (1e-5, 1e-7)

# Adai's 1 - beta1_prod cancels: with beta1 near 1 - eps = 0.999 it is ~1e-3, so its 6e-8
# rounding becomes 6e-5 relative in m / (1 - beta1_prod); the update is lr (0.5) times that
# (param scale 0.05, grads 0.1), so params carry up to ~3e-6 absolute error.
FP32_ADAI = (1e-4, 1e-5)

# bf16 / fp16 params: the math is fp32 (errors as above) but each step rounds the param to
# 8 (bf16) or 11 (fp16) significant bits. The oracle rounds its fp64 param the same way, so
# the two agree except where the fp32 and fp64 results straddle a rounding boundary: one ulp
# (2^-7 relative for bf16, 2^-10 for fp16), which can carry into later steps once. States
# stay fp32 but see the param through weight decay: a one-ulp param flip moves the gradient
# the states integrate by weight_decay * that ulp (see state_tolerance).
# A flip that happened while an element was larger (it then moved toward zero) keeps its
# absolute size, so atol is that ulp at the tensor's largest magnitude (see param_tolerance).
BF16_ULP = 2 ** -7
FP16_ULP = 2 ** -10
LOW_PRECISION_STATE = (1e-3, 1e-6)


def _fp(optimizer: str, dtype: torch.dtype):
    if dtype == torch.float64:
        return FP64
    return FP32_ADAI if optimizer in ("Adai", "AdaiW") else FP32


def param_tolerance(optimizer: str, dtype: torch.dtype, expected: torch.Tensor):
    """(rtol, atol) for a param of this dtype compared with its fp64 oracle value."""
    ulp = {torch.bfloat16: BF16_ULP, torch.float16: FP16_ULP}.get(dtype)
    if ulp is None:
        return _fp(optimizer, dtype)
    largest = float(expected.abs().max()) if expected.numel() else 0.0
    return 2 * ulp, ulp * largest


def state_tolerance(optimizer: str, dtype: torch.dtype, weight_decay: float, param_atol: float):
    """(rtol, atol) for a state tensor of a param of this dtype; param_atol is that param's
    atol from param_tolerance. States are running averages of weight_decay * p terms (weights
    summing to at most 1), so a param flip enters them at most once at that size."""
    if dtype in (torch.bfloat16, torch.float16):
        rtol, atol = LOW_PRECISION_STATE
        return rtol, atol + weight_decay * param_atol
    return _fp(optimizer, dtype)


# state_dtype=torch.bfloat16: every state is rounded to bf16 (8 significant bits, relative
# 2^-9) at the end of every step. The states feed each other (AdaMomentum squares m into v,
# Adai derives beta1 from v and multiplies it into beta1_prod), so after 6 steps their errors
# reach a few bf16 ulps: 2^-5 (4 ulps of 2^-7) relative bounds them, with the same size of the
# tensor's largest magnitude as atol for elements crossing zero (m changes sign).
BF16_STATE = 2 ** -5
# Params move by lr x (a ratio of states); a few-ulp error of those states is a few percent of
# each step's movement at most: 1/32 of the largest movement (measured: <= 1.3%).
BF16_STATE_MOVEMENT = 1 / 32


def bf16_state_param_tolerance(optimizer: str, dtype: torch.dtype, expected: torch.Tensor, initial: torch.Tensor):
    """(rtol, atol) for a param updated with bf16 states: the movement allowance above plus
    the param dtype's own rounding (param_tolerance)."""
    rtol, atol = param_tolerance(optimizer, dtype, expected)
    movement = float((expected - initial).abs().max()) if expected.numel() else 0.0
    return rtol, atol + BF16_STATE_MOVEMENT * movement


def bf16_state_tolerance(expected: torch.Tensor):
    largest = float(expected.abs().max()) if expected.numel() else 0.0
    return BF16_STATE, BF16_STATE * largest
