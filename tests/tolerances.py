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


# Lion moves each element by exactly lr per step, in the direction sign(c), c = beta1 m +
# (1 - beta1) g. Where c lies within rounding of 0 (fp32 math or bf16 states against the fp64
# oracle), the two sides can take different signs: that element is then off by lr or 2 lr for
# that step, and no other element is affected (m does not depend on the sign). With random
# grads that happens a few times per million element-steps (measured: 1 of 1.26M, fp16), so at
# most LION_FLIP_SHARE of a tensor's elements (and at least one) may be off by a whole multiple
# of lr; every other element must meet the dtype's tolerance.
LION_FLIP_SHARE = 1e-4
# With bf16 states m carries 2^-9 relative rounding, so c is unsure wherever |c| is below about
# 2^-8 of beta1 |m|: many more elements (measured: 9 of 4097 after 6 steps, 0.2%).
LION_BF16_STATE_FLIP_SHARE = 1e-2


def assert_param_close(optimizer: str, dtype: torch.dtype, actual: torch.Tensor, expected: torch.Tensor,
                       lr: float, rtol: float = None, atol: float = None,
                       flip_share: float = LION_FLIP_SHARE) -> None:
    """A param against its fp64 oracle value: param_tolerance (or the given rtol/atol), with
    Lion's sign flips allowed as above."""
    if rtol is None:
        rtol, atol = param_tolerance(optimizer, dtype, expected)
    actual, expected = actual.detach().double(), expected.detach().double()
    if optimizer != "Lion" or actual.shape != expected.shape:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
        return
    allowed = atol + rtol * expected.abs()
    off = (actual - expected).abs() > allowed
    flips = int(off.sum())
    assert flips <= max(1, flip_share * actual.numel()), f"Lion: {flips} of {actual.numel()} elements off"
    if flips:
        difference = (actual - expected)[off]
        whole = (difference / lr).round()
        assert bool((whole != 0).all()) and bool(((difference - whole * lr).abs() <= allowed[off]).all()), (
            f"Lion: elements off by other than a whole multiple of lr {lr}: {difference.tolist()[:5]}")
