// The element loop of the one-pass updates (Adam/AdamW, AdaMomentum, DualAdam, Lion): each
// element reads p, g and the optimizer's states (its moments), is updated in registers by the
// optimizer's math, and p and the states are written back. bf16/fp16 params with a master
// copy, a remainder or stochastic rounding (param_access.h) take the same one pass: fp32 Adam
// with bf16 params and grads moves 28 B/element with masters (read master, g, m, v; write
// master, m, v, param), 26 with remainders, 22 with stochastic rounding. Each stream is
// prefetched ahead of the loop (prefetch.h).
#pragma once
#include <cstddef>
#include <utility>

#include "entry.h"
#include "param_access.h"
#include "prefetch.h"

namespace fused_optim::cpu {

namespace detail {

template <int MODE, bool SCALED, class P, class T, class Update, class... S, size_t... I>
FO_INLINE void moment_elements(std::index_sequence<I...>, P* __restrict p, const P* __restrict g, int64_t begin,
                               int64_t end, const T grad_divisor, const ParamExtra& x, Update& update,
                               S* __restrict... states) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    T pi = load_param<MODE>(p, x, i);
    T s[] = {T(states[i])...};
    const T gi = T(load_value(g[i]));
    update(pi, SCALED ? gi / grad_divisor : gi, s[I]...);
    store_param<MODE>(p, x, i, pi);
    ((states[i] = s[I]), ...);
  }
}

template <int MODE, bool SCALED, class P, class T, class Update, class... S>
FO_INLINE void moment_loop(P* p, const P* g, int64_t n, const T grad_divisor, const ParamExtra& x, Update& update,
                           S*... states) {
  prefetched_blocks(
      n,
      [&](int64_t ahead) FO_LAMBDA_INLINE {
        prefetch_param<MODE>(p, x, ahead);
        prefetch_block<false>(g + ahead);
        (prefetch_block<true>(states + ahead), ...);
      },
      [&](int64_t begin, int64_t end) FO_LAMBDA_INLINE {
        moment_elements<MODE, SCALED>(std::index_sequence_for<S...>{}, p, g, begin, end, grad_divisor, x, update,
                                       states...);
      });
}

}  // namespace detail

// Inlined into each optimizer's FO_CPU_CLONES chunk function, so it vectorizes per ISA clone.
// update(p, g, state...) works on math-type registers, one per state pointer given (states are
// stored in the math type). grad_divisor: GradScaler's scale over the clip coefficient (1
// without either), divided out of each grad in the math dtype as the reference does, instead
// of a divided copy of the grads. MODE: how the param is stored (param_access.h); x: the
// chunk's master/remainder data.
template <int MODE, class P, class T, class Update, class... S>
FO_INLINE void moment_loop(P* p, const P* g, int64_t n, const T grad_divisor, const ParamExtra& x, Update&& update,
                           S*... states) {
  // g / 1 is g exactly, so the loop without the division (a vector divide per element, a
  // quarter of an fp32 Adam element's arithmetic) gives the same bits when nothing scales
  if (grad_divisor == T(1)) {
    detail::moment_loop<MODE, false>(p, g, n, grad_divisor, x, update, states...);
  } else {
    detail::moment_loop<MODE, true>(p, g, n, grad_divisor, x, update, states...);
  }
}

}  // namespace fused_optim::cpu
