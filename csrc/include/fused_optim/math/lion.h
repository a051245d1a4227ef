// Lion (evolved sign momentum) per-element update. Mirrors fused_optim/reference/lion.py
// (lion_step): one state, exp_avg; the step is the sign of an interpolation of m and g, so the
// per-param step count enters only stochastic rounding's key.
#pragma once

#include "fused_optim/args.h"
#include "fused_optim/platform.h"

namespace fused_optim::math {

// The hyperparameters of lion_step (fused_optim/operations.py), unpacked from each call.
#define FO_LION_STEP_ARGS(F) F(double, lr) F(double, beta1) F(double, beta2) F(double, weight_decay)
FO_DECLARE_ARGS(LionStepArgs, FO_LION_STEP_ARGS)

template <class T>
struct LionHyper {
  T lr, beta1, beta2;
  T decay;  // 1 - lr wd, the decoupled weight-decay factor
  // complements formed in fp64 on the host, then rounded (as MomentHyper's)
  T one_minus_beta1, one_minus_beta2;
  // wd != 0, decided on the host; a plain flag, so a CPU loop can fix it at compile time
  bool apply_decay;
};

template <class T>
FO_HOST_DEVICE inline LionHyper<T> lion_hyper(double lr, double beta1, double beta2, double weight_decay) {
  LionHyper<T> h;
  h.lr = T(lr);
  h.beta1 = T(beta1);
  h.beta2 = T(beta2);
  h.decay = T(1.0 - lr * weight_decay);
  h.one_minus_beta1 = T(1.0 - beta1);
  h.one_minus_beta2 = T(1.0 - beta2);
  h.apply_decay = weight_decay != 0.0;
  return h;
}

// The reference's sign: -1 or +1, +0 for either zero (torch.sign), and NaN for NaN (where
// torch.sign gives 0: a param whose grad went NaN turns NaN instead of silently freezing).
// Comparisons and selects, so the CPU loop vectorizes.
template <class T>
FO_HOST_DEVICE FO_INLINE T lion_sign(T x) {
  const T sign = T(x > T(0) ? 1 : 0) - T(x < T(0) ? 1 : 0);
  return x != x ? x : sign;
}

// p = p (1 - lr wd); c = m beta1 + g (1 - beta1); p = p - sign(c) lr;
// m = m beta2 + g (1 - beta2): the reference's statements (lion_step) in its order, each
// product rounded on its own. lr sign(c) is exact.
template <class T>
FO_HOST_DEVICE FO_INLINE void lion_element(T& p, T g, T& m, const LionHyper<T>& h) {
  if (h.apply_decay) p = p * h.decay;
  const T update = lion_sign(m * h.beta1 + g * h.one_minus_beta1);
  p = p - update * h.lr;
  m = m * h.beta2 + g * h.one_minus_beta2;
}

}  // namespace fused_optim::math
