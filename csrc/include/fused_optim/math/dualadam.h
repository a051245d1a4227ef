// InvAdam / DualAdam per-element update. Mirrors fused_optim/reference/dualadam.py
// (dualadam_step), which follows the authors' code.
#pragma once
#include <cmath>

#include "fused_optim/math/moments.h"
#include "fused_optim/platform.h"

namespace fused_optim::math {

// The hyperparameters of dualadam_step (fused_optim/operations.py), unpacked from each call;
// its step is the call's global one.
#define FO_DUALADAM_STEP_ARGS(F) FO_MOMENT_ARGS(F) F(double, switch_rate)
FO_DECLARE_ARGS(DualAdamStepArgs, FO_DUALADAM_STEP_ARGS)

// Scalars shared by every tensor of a group (the step is global).
template <class T>
struct DualAdamHyper : MomentHyper<T> {
  T bc1, bc2;                // 1 - beta^t with the GLOBAL step, rounded from fp64
  T alpha, one_minus_alpha;  // weights of the inverse and Adam terms while blending
  bool blend;                // alpha >= switch_rate, decided in fp64
};

// (alpha, blend) of fused_optim.reference.dualadam_blend_weight: alpha = max(0, 1 - t xi),
// blend while alpha >= xi, in fp64. The CUDA kernels evaluate it on the device when the
// global step lives there (capturable); their build disables a*b+c contraction (--fmad=false),
// so 1 - t xi rounds twice exactly as in Python and boundary steps do not flip.
FO_HOST_DEVICE inline bool dualadam_blend_weight(double global_step, double switch_rate, double& alpha) {
  const double a = 1.0 - global_step * switch_rate;
  alpha = a > 0.0 ? a : 0.0;
  return alpha >= switch_rate;
}

// The blend weight and predicate are decided by the caller in fp64 (see reference); the bias
// corrections use the GLOBAL step.
template <class T>
FO_HOST_DEVICE inline DualAdamHyper<T> dualadam_hyper(double lr, double beta1, double beta2,
                                                      double eps, double weight_decay,
                                                      double global_step, double alpha,
                                                      bool blend) {
  DualAdamHyper<T> h;
  // weight decay is decoupled (authors' code)
  static_cast<MomentHyper<T>&>(h) = moment_hyper<T>(lr, beta1, beta2, eps, weight_decay, true);
  h.bc1 = T(1.0 - pow(beta1, global_step));
  h.bc2 = T(1.0 - pow(beta2, global_step));
  h.alpha = T(alpha);
  h.one_minus_alpha = T(1.0 - alpha);
  h.blend = blend;
  return h;
}

template <class T>
FO_HOST_DEVICE FO_INLINE void dualadam_element(T& p, T g, T& m, T& v, const DualAdamHyper<T>& h) {
  if (h.apply_decay) p = p * h.decay;
  m = m * h.beta1 + h.one_minus_beta1 * g;
  v = v * h.beta2 + h.one_minus_beta2 * g * g;
  const T mhat = m / h.bc1;
  const T vhat = v / h.bc2;
  const T d = sqrt(vhat) + h.eps;
  const T adam = mhat / d;
  const T update = h.blend ? h.alpha * (mhat * d) + h.one_minus_alpha * adam : adam;
  p = p - h.lr * update;
}

}  // namespace fused_optim::math
