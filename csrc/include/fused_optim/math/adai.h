// Adai (adaptive inertia) per-element update, in its two passes around the global mean.
// Mirrors fused_optim/reference/adai.py (adai_second_moment, adai_update).
#pragma once
#include <cmath>

#include "fused_optim/args.h"
#include "fused_optim/platform.h"

namespace fused_optim::math {

// The hyperparameters of Adai's three operations (fused_optim/operations.py), unpacked from
// each call: pass 1 (adai_second_moment, or adai_clip_sums when max_grad_norm clips the
// grads) and the update pass.
#define FO_ADAI_SECOND_MOMENT_ARGS(F) F(double, beta2) F(double, weight_decay) F(bool, decoupled)
FO_DECLARE_ARGS(AdaiSecondMomentArgs, FO_ADAI_SECOND_MOMENT_ARGS)
#define FO_ADAI_CLIP_SUMS_ARGS(F) FO_ADAI_SECOND_MOMENT_ARGS(F) F(NormOrder, norm_type)
FO_DECLARE_ARGS(AdaiClipSumsArgs, FO_ADAI_CLIP_SUMS_ARGS)
#define FO_ADAI_UPDATE_ARGS(F) \
  F(double, lr) F(double, beta0) F(double, beta2) F(double, eps) F(double, weight_decay) F(bool, decoupled)
FO_DECLARE_ARGS(AdaiUpdateArgs, FO_ADAI_UPDATE_ARGS)

template <class T>
struct AdaiHyper {
  T lr, decay, beta0, beta2, eps, weight_decay;  // decay = 1 - lr wd
  T one_minus_beta2, one_minus_eps;  // formed in fp64 on the host, then rounded
  // AdaiW: p *= 1 - lr wd before the update; Adai: g_eff = g + wd p. Decided on the host
  // (neither when wd == 0); plain flags, so a CPU loop can fix them at compile time.
  bool apply_decay, apply_l2;
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
  h.apply_decay = decoupled && weight_decay != 0.0;
  h.apply_l2 = !decoupled && weight_decay != 0.0;
  return h;
}

// Per-tensor scalar, fp64 from the tensor's own step (reference: adai_bias_correction2).
FO_HOST_DEVICE inline double adai_bias_correction2(double beta2, double step) {
  return 1.0 - pow(beta2, step);
}

template <class T>
FO_HOST_DEVICE FO_INLINE T adai_effective_grad(T g, T p, const AdaiHyper<T>& h) {
  return h.apply_l2 ? g + h.weight_decay * p : g;
}

// The native passes split the step differently from the reference (same result): the mean
// needs sum(v_new) before any update, and v_new = beta2 v + (1 - beta2) g_eff^2 is linear, so
// sum(v_new) = beta2 sum(v) + (1 - beta2) sum(g_eff^2), with sum(v) carried over from the
// previous step's update pass. Pass 1 then reads only g (and p for L2); pass 2 does the whole
// element update, v included, and sums the new v for the next step.

// One tensor's sum of vhat from its carried sum(v) and this step's sum(g_eff^2), in fp64.
FO_HOST_DEVICE inline double adai_vhat_sum(double v_sum, double grad_sq_sum, double beta2,
                                           double bc2) {
  return (beta2 * v_sum + (1.0 - beta2) * grad_sq_sum) / bc2;
}

// Pass 1 term: g_eff^2 (reference: the g_eff of adai_second_moment).
template <class T>
FO_HOST_DEVICE FO_INLINE T adai_grad_sq_element(T p, T g, const AdaiHyper<T>& h) {
  const T ge = adai_effective_grad(g, p, h);
  return ge * ge;
}

// v = beta2 v + (1 - beta2) g_eff^2 (reference: adai_second_moment). Shared by the update pass
// and by a reduction pass that needs the new v without storing it (the CUDA pass 1).
template <class T>
FO_HOST_DEVICE FO_INLINE T adai_new_second_moment(T v, T ge, const AdaiHyper<T>& h) {
  return h.beta2 * v + h.one_minus_beta2 * ge * ge;
}

// The CUDA pass 1 term: vhat of the new v, v left unwritten (reference: the summand of
// adai_second_moment). bc2 from adai_bias_correction2, rounded to T.
template <class T>
FO_HOST_DEVICE FO_INLINE T adai_vhat_element(T p, T g, T v, const AdaiHyper<T>& h, T bc2) {
  return adai_new_second_moment(v, adai_effective_grad(g, p, h), h) / bc2;
}

// The inertia ratio vhat / vbar. vbar == 0 means every counted vhat is exactly zero (they are
// all >= 0); the authors' code then yields 0/0 = NaN. OURS: we take the ratio as 1, the limit
// of uniformly vanishing second moments (every element equals the mean), so beta1 = 1 - beta0
// and the step is finite. NaN/inf inputs still propagate as in the reference.
template <class T>
FO_HOST_DEVICE FO_INLINE T adai_inertia_ratio(T vhat, T vbar) {
  return vbar == T(0) ? T(1) : vhat / vbar;
}

// Pass 2: v = beta2 v + (1 - beta2) g_eff^2 (reference: adai_second_moment);
// beta1 = clamp(1 - beta0 vhat / vbar, 0, 1 - eps); beta1_prod *= beta1;
// m = beta1 m + (1 - beta1) g_eff; p -= lr m / (1 - beta1_prod) (reference: adai_update).
template <class T>
FO_HOST_DEVICE FO_INLINE void adai_update_element(T& p, T g, T& m, T& v, T& beta1_prod,
                                                  const AdaiHyper<T>& h, T bc2, T vbar) {
  const T ge = adai_effective_grad(g, p, h);
  if (h.apply_decay) p = p * h.decay;
  v = adai_new_second_moment(v, ge, h);
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
