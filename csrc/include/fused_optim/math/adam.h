// Adam / AdamW per-element update. Mirrors fused_optim/reference/adam.py (adam_step), which
// follows torch.optim.Adam's single-tensor path operation by operation.
#pragma once
#include <cmath>

#include "fused_optim/math/moments.h"
#include "fused_optim/platform.h"

namespace fused_optim::math {

// The hyperparameters of adam_step (fused_optim/operations.py), unpacked from each call.
#define FO_ADAM_STEP_ARGS(F) FO_MOMENT_ARGS(F) F(bool, decoupled) F(bool, amsgrad) F(bool, maximize)
FO_DECLARE_ARGS(AdamStepArgs, FO_ADAM_STEP_ARGS)

// Per-tensor scalars, from the tensor's own step, in fp64 (reference: adam_scalars).
struct AdamScalars {
  double step_size;  // lr / (1 - beta1^t)
  double bc2_sqrt;   // sqrt(1 - beta2^t)
};

FO_HOST_DEVICE inline AdamScalars adam_scalars(double lr, double beta1, double beta2, double step) {
  const double bc1 = 1.0 - pow(beta1, step);
  const double bc2 = 1.0 - pow(beta2, step);
  return AdamScalars{lr / bc1, sqrt(bc2)};
}

template <class T>
struct AdamHyper : MomentHyper<T> {
  // maximize as a factor (-1 or +1, exact) rather than a branch: with three invariant
  // branches in the loop GCC stops vectorizing it
  T grad_sign;
};

template <class T>
FO_HOST_DEVICE inline AdamHyper<T> adam_hyper(double lr, double beta1, double beta2, double eps,
                                              double weight_decay, bool decoupled, bool maximize) {
  AdamHyper<T> h;
  // AdamW (decoupled): p *= 1 - lr wd; Adam: g += wd p
  static_cast<MomentHyper<T>&>(h) = moment_hyper<T>(lr, beta1, beta2, eps, weight_decay, decoupled);
  h.grad_sign = T(maximize ? -1.0 : 1.0);
  return h;
}

// AMSGRAD is a template flag because it changes which memory the loop touches.
template <bool AMSGRAD, class T>
FO_HOST_DEVICE FO_INLINE void adam_element(T& p, T g, T& m, T& v, T& vmax, const AdamHyper<T>& h,
                                           T step_size, T bc2_sqrt) {
  g = g * h.grad_sign;  // maximize: -g
  if (h.apply_decay) p = p * h.decay;
  if (h.apply_l2) g = g + h.weight_decay * p;
  m = m + h.one_minus_beta1 * (g - m);  // torch: exp_avg.lerp_(grad, 1 - beta1)
  v = v * h.beta2 + h.one_minus_beta2 * g * g;
  T second = v;
  if (AMSGRAD) {
    vmax = vmax > v ? vmax : v;
    second = vmax;
  }
  const T denom = sqrt(second) / bc2_sqrt + h.eps;
  p = p + (-step_size) * m / denom;  // torch addcdiv_: self + value * t1 / t2
}

}  // namespace fused_optim::math
