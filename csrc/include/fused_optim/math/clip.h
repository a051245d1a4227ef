// Grad-norm terms of max_grad_norm (reference: fused_optim/reference/adai.py, adai_clip_sums;
// torch.nn.utils.clip_grad_norm_ for the norm itself), shared by the CPU loops and the CUDA
// kernels. A norm of order q over all grads is the q-th root of the sum of |g|^q, or the max
// (min for q = -inf) of |g|; each kernel produces its part, the optimizer combines them.
#pragma once
#include <cmath>

#include "fused_optim/platform.h"

namespace fused_optim::math {

// How one element enters a norm part: kNormTwo adds g^2 (which the Adai sums need anyway),
// kNormOne |g|, kNormPower |g|^q, kNormMax / kNormMin keep the largest / smallest |g|.
enum NormKind : int { kNormTwo = 0, kNormOne = 1, kNormPower = 2, kNormMax = 3, kNormMin = 4, kNormKinds = 5 };

// (decided on the host)
inline int norm_kind(double q) {
  if (q == 2.0) return kNormTwo;
  if (q == 1.0) return kNormOne;
  if (q == INFINITY) return kNormMax;
  if (q == -INFINITY) return kNormMin;
  return kNormPower;
}

FO_HOST_DEVICE inline bool norm_is_extremum(int kind) { return kind == kNormMax || kind == kNormMin; }

// The start of a part: 0 for sums and the max, +inf for the min.
FO_HOST_DEVICE inline double norm_identity(int kind) { return kind == kNormMin ? INFINITY : 0.0; }

// A sum kind's term of one (exact, widened) grad value.
template <int KIND>
FO_HOST_DEVICE FO_INLINE double norm_term(double g, double q) {
  if (KIND == kNormTwo) return g * g;
  if (KIND == kNormOne) return fabs(g);
  return pow(fabs(g), q);
}

// Two parts of an extremum kind combined; a NaN wins, as torch's max/min propagate it.
template <int KIND>
FO_HOST_DEVICE FO_INLINE double norm_extremum(double a, double b) {
  if (a != a || b != b) return a != a ? a : b;
  if (KIND == kNormMax) return a > b ? a : b;
  return a < b ? a : b;
}

// What one tensor's sums give Adai's clipped pass 1: its sum of vhat as a quadratic
// c0 + c1 c + c2 c^2 in the clip coefficient c, since v_new = beta2 v + (1 - beta2)
// (c g + wd p)^2 (wd: coupled L2 only, else 0). Sums of the exact fp64 values of v, g^2, g p
// and p^2; bc2 from adai_bias_correction2. Reference: adai_clip_sums.
struct AdaiClipTerms {
  double c0, c1, c2;
};

FO_HOST_DEVICE inline AdaiClipTerms adai_clip_terms(double v_sum, double gg, double gp, double pp,
                                                    double beta2, double l2_weight_decay, double bc2) {
  const double w = 1.0 / bc2, k = 1.0 - beta2, wd = l2_weight_decay;
  return {w * (beta2 * v_sum + k * wd * wd * pp), w * (2.0 * k * wd * gp), w * (k * gg)};
}

}  // namespace fused_optim::math
