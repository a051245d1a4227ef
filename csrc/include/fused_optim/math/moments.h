// Hyperparameters shared by the Adam-family updates (Adam/AdamW, AdaMomentum, DualAdam):
// first/second moment decay rates, eps, weight decay, lr.
#pragma once

#include "fused_optim/args.h"
#include "fused_optim/platform.h"

// The hyperparameters these optimizers' operations begin with (fused_optim/operations.py's
// _MOMENTS), in that order; each operation's struct (args.h) lists them, then its own.
#define FO_MOMENT_ARGS(F) F(double, lr) F(double, beta1) F(double, beta2) F(double, eps) F(double, weight_decay)

namespace fused_optim::math {

template <class T>
struct MomentHyper {
  T lr, beta1, beta2, eps, weight_decay;
  T decay;  // 1 - lr wd, the decoupled weight-decay factor
  // complements are formed in fp64 on the host, then rounded: 1 - float(0.999) is off by
  // 1e-5 relative from 1 - 0.999
  T one_minus_beta1, one_minus_beta2;
  // Which weight decay applies, decided on the host: p *= decay (decoupled) or g += wd p (L2),
  // neither when wd == 0. Plain flags, so a CPU loop can fix them at compile time.
  bool apply_decay, apply_l2;
};

template <class T>
FO_HOST_DEVICE inline MomentHyper<T> moment_hyper(double lr, double beta1, double beta2, double eps,
                                                  double weight_decay, bool decoupled) {
  MomentHyper<T> h;
  h.lr = T(lr);
  h.beta1 = T(beta1);
  h.beta2 = T(beta2);
  h.eps = T(eps);
  h.weight_decay = T(weight_decay);
  h.decay = T(1.0 - lr * weight_decay);
  h.one_minus_beta1 = T(1.0 - beta1);
  h.one_minus_beta2 = T(1.0 - beta2);
  h.apply_decay = decoupled && weight_decay != 0.0;
  h.apply_l2 = !decoupled && weight_decay != 0.0;
  return h;
}

}  // namespace fused_optim::math
