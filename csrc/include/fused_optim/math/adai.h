// Adai (adaptive inertia) per-element update, in its two passes. Mirrors
// fused_optim/reference/adai.py: adai_second_moment (pass 1) and adai_update (pass 2).
#pragma once
#include <cmath>

#include "fused_optim/platform.h"

namespace fused_optim::math {

template <class T>
struct AdaiHyper {
  T lr, decay, beta0, beta2, eps, weight_decay;  // decay = 1 - lr wd
  T one_minus_beta2, one_minus_eps;  // formed in fp64 on the host, then rounded
  bool decoupled;  // AdaiW: p *= 1 - lr wd before the update; Adai: g_eff = g + wd p
};

template <class T>
FO_HOST_DEVICE inline AdaiHyper<T> adai_hyper(double lr, double beta0, double beta2, double eps,
                                              double weight_decay, bool decoupled) {
  AdaiHyper<T> h;
  h.lr = T(lr);
  h.decay = T(1.0 - lr * weight_decay);
  h.beta0 = T(beta0);
  h.beta2 = T(beta2);
  h.eps = T(eps);
  h.weight_decay = T(weight_decay);
  h.one_minus_beta2 = T(1.0 - beta2);
  h.one_minus_eps = T(1.0 - eps);
  h.decoupled = decoupled;
  return h;
}

// Per-tensor scalar, fp64 from the tensor's own step (reference: adai_bias_correction2).
FO_HOST_DEVICE inline double adai_bias_correction2(double beta2, double step) {
  return 1.0 - pow(beta2, step);
}

template <class T>
FO_HOST_DEVICE FO_INLINE T adai_effective_grad(T g, T p, const AdaiHyper<T>& h) {
  return (!h.decoupled && h.weight_decay != T(0)) ? g + h.weight_decay * p : g;
}

// Pass 1: v = beta2 v + (1 - beta2) g_eff^2; returns vhat = v / bc2, the term of the global
// mean. Reads g, v (and p for coupled L2), writes v.
template <class T>
FO_HOST_DEVICE FO_INLINE T adai_second_moment_element(T p, T g, T& v, const AdaiHyper<T>& h, T bc2) {
  const T ge = adai_effective_grad(g, p, h);
  v = h.beta2 * v + h.one_minus_beta2 * ge * ge;
  return v / bc2;
}

// The inertia ratio vhat / vbar. vbar == 0 means every counted vhat is exactly zero (they are
// all >= 0); the authors' code then yields 0/0 = NaN. OURS: we take the ratio as 1, the limit
// of uniformly vanishing second moments (every element equals the mean), so beta1 = 1 - beta0
// and the step is finite. NaN/inf inputs still propagate as in the reference.
template <class T>
FO_HOST_DEVICE FO_INLINE T adai_inertia_ratio(T vhat, T vbar) {
  return vbar == T(0) ? T(1) : vhat / vbar;
}

// Pass 2: beta1 = clamp(1 - beta0 vhat / vbar, 0, 1 - eps); beta1_prod *= beta1;
// m = beta1 m + (1 - beta1) g_eff; p -= lr m / (1 - beta1_prod).
// Reads p, g, m, v, beta1_prod; writes p, m, beta1_prod.
template <class T>
FO_HOST_DEVICE FO_INLINE void adai_update_element(T& p, T g, T& m, T v, T& beta1_prod,
                                                  const AdaiHyper<T>& h, T bc2, T vbar) {
  const T ge = adai_effective_grad(g, p, h);
  if (h.decoupled && h.weight_decay != T(0)) p = p * h.decay;
  const T vhat = v / bc2;
  T beta1 = T(1) - adai_inertia_ratio(vhat, vbar) * h.beta0;
  // clamp written with comparisons so a NaN stays NaN, as torch.clamp does
  beta1 = beta1 < T(0) ? T(0) : beta1;
  beta1 = beta1 > h.one_minus_eps ? h.one_minus_eps : beta1;
  beta1_prod = beta1_prod * beta1;
  m = m * beta1 + (T(1) - beta1) * ge;
  p = p - h.lr * (m / (T(1) - beta1_prod));
}

}  // namespace fused_optim::math
