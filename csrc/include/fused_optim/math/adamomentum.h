// AdaMomentum (AdaM3) per-element update. Mirrors fused_optim/reference/adamomentum.py
// (adamomentum_step), which follows the authors' code.
#pragma once
#include <cmath>

#include "fused_optim/platform.h"

namespace fused_optim::math {

// Per-tensor scalars, fp64 from the tensor's own step (reference: adamomentum_scalars).
struct AdaMomentumScalars {
  double step_size;  // lr / bc1 (plain) or lr r_t / bc1 (rectified, adaptive)
  double bc2_sqrt;   // sqrt(1 - beta2^t)
  bool adaptive;     // false only when rectify is on and rho_t < 5: the SGD-like step
};

FO_HOST_DEVICE inline AdaMomentumScalars adamomentum_scalars(double lr, double beta1, double beta2,
                                                             double step, bool rectify) {
  const double bc1 = 1.0 - pow(beta1, step);
  const double beta2_t = pow(beta2, step);
  const double bc2 = 1.0 - beta2_t;
  if (!rectify) return AdaMomentumScalars{lr / bc1, sqrt(bc2), true};
  const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * step * beta2_t / bc2;
  if (rho_t < 5.0) return AdaMomentumScalars{lr / bc1, sqrt(bc2), false};
  const double r_t = sqrt(bc2 * (rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                          ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
  return AdaMomentumScalars{lr * r_t / bc1, sqrt(bc2), true};
}

template <class T>
struct AdaMomentumHyper {
  T lr, decay, beta1, beta2, eps, weight_decay;  // decay = 1 - lr wd
  T one_minus_beta1, one_minus_beta2;  // complements are formed in fp64 on the host, then rounded:
                                      // 1 - float(0.999) is off by 1e-5 relative
  bool decoupled;  // p *= 1 - lr wd (authors' default); else g += wd p
  bool rectify;
};

template <class T>
FO_HOST_DEVICE inline AdaMomentumHyper<T> adamomentum_hyper(double lr, double beta1, double beta2,
                                                            double eps, double weight_decay,
                                                            bool decoupled, bool rectify) {
  AdaMomentumHyper<T> h;
  h.lr = T(lr);
  h.decay = T(1.0 - lr * weight_decay);
  h.beta1 = T(beta1);
  h.beta2 = T(beta2);
  h.eps = T(eps);
  h.weight_decay = T(weight_decay);
  h.one_minus_beta1 = T(1.0 - beta1);
  h.one_minus_beta2 = T(1.0 - beta2);
  h.decoupled = decoupled;
  h.rectify = rectify;
  return h;
}

template <bool AMSGRAD, class T>
FO_HOST_DEVICE FO_INLINE void adamomentum_element(T& p, T g, T& m, T& v, T& vmax,
                                                  const AdaMomentumHyper<T>& h, T step_size,
                                                  T bc2_sqrt, bool adaptive) {
  if (h.decoupled) p = p * h.decay;
  else if (h.weight_decay != T(0)) g = g + h.weight_decay * p;
  m = m * h.beta1 + h.one_minus_beta1 * g;
  // the NEW m is squared, and eps accumulates inside the state (authors' code)
  v = v * h.beta2 + h.one_minus_beta2 * m * m + h.eps;
  T second = v;
  if (AMSGRAD) {
    vmax = vmax > v ? vmax : v;
    second = vmax;
  }
  if (!h.rectify) {
    p = p + (-step_size) * m / (sqrt(second) / bc2_sqrt);  // addcdiv_ order
  } else if (adaptive) {
    p = p + (-step_size) * m / (sqrt(second) + h.eps);
  } else {
    p = p + (-step_size) * m;
  }
}

}  // namespace fused_optim::math
