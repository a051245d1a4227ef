// AdaMomentum (AdaM3) per-element update. Mirrors fused_optim/reference/adamomentum.py
// (adamomentum_step), which follows the authors' code.
#pragma once
#include <cmath>

#include "fused_optim/math/moments.h"
#include "fused_optim/platform.h"

namespace fused_optim::math {

// The hyperparameters of adamomentum_step (fused_optim/operations.py), unpacked from each call.
#define FO_ADAMOMENTUM_STEP_ARGS(F) FO_MOMENT_ARGS(F) F(bool, decoupled) F(bool, amsgrad) F(bool, rectify)
FO_DECLARE_ARGS(AdaMomentumStepArgs, FO_ADAMOMENTUM_STEP_ARGS)

// The denominator of a tensor's step, decided per tensor on the host.
enum AdaMomentumDenominator : int {
  kBiasCorrected = 0,  // plain: sqrt(v) / sqrt(bc2)
  kRectified = 1,      // rectify, rho_t >= 5: sqrt(v) + eps
  kMomentumOnly = 2,   // rectify, rho_t < 5: none, the step is SGD with momentum
};

// Per-tensor scalars, fp64 from the tensor's own step (reference: adamomentum_scalars).
struct AdaMomentumScalars {
  double step_size;  // lr / bc1, or lr r_t / bc1 when rectified
  double bc2_sqrt;   // sqrt(1 - beta2^t)
  AdaMomentumDenominator denominator;
};

FO_HOST_DEVICE inline AdaMomentumScalars adamomentum_scalars(double lr, double beta1, double beta2,
                                                             double step, bool rectify) {
  const double bc1 = 1.0 - pow(beta1, step);
  const double beta2_t = pow(beta2, step);
  const double bc2 = 1.0 - beta2_t;
  if (!rectify) return AdaMomentumScalars{lr / bc1, sqrt(bc2), kBiasCorrected};
  const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * step * beta2_t / bc2;
  if (rho_t < 5.0) return AdaMomentumScalars{lr / bc1, sqrt(bc2), kMomentumOnly};
  const double r_t = sqrt(bc2 * (rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                          ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
  return AdaMomentumScalars{lr * r_t / bc1, sqrt(bc2), kRectified};
}

// decoupled (the authors' default): p *= 1 - lr wd; else g += wd p
template <class T>
using AdaMomentumHyper = MomentHyper<T>;

template <bool AMSGRAD, class T>
FO_HOST_DEVICE FO_INLINE void adamomentum_element(T& p, T g, T& m, T& v, T& vmax,
                                                  const AdaMomentumHyper<T>& h, T step_size,
                                                  T bc2_sqrt, AdaMomentumDenominator denominator) {
  if (h.apply_decay) p = p * h.decay;
  if (h.apply_l2) g = g + h.weight_decay * p;
  m = m * h.beta1 + h.one_minus_beta1 * g;
  // the NEW m is squared, and eps accumulates inside the state (authors' code)
  v = v * h.beta2 + h.one_minus_beta2 * m * m + h.eps;
  T second = v;
  if (AMSGRAD) {
    vmax = vmax > v ? vmax : v;
    second = vmax;
  }
  // one division for all three forms (selects, so the loop vectorizes); m / 1 == m exactly
  const T root = sqrt(second);
  const T denom = denominator == kBiasCorrected ? root / bc2_sqrt  // addcdiv_(m, sqrt(v) / sqrt(bc2))
                  : denominator == kRectified   ? root + h.eps      // addcdiv_(m, sqrt(v) + eps)
                                                : T(1);             // add_(m): SGD with momentum
  p = p + (-step_size) * m / denom;  // torch addcdiv_ order: self + value * t1 / t2
}

}  // namespace fused_optim::math
