// The element loop and the chunk walk of the Adam-family updates (Adam/AdamW, AdaMomentum,
// DualAdam): each element reads p, g, m, v (and vmax with amsgrad), updates them in
// registers with the optimizer's math, and writes p, m, v (, vmax) back. bf16/fp16 params with
// a master copy, a remainder or stochastic rounding (param_access.h) take the same one pass:
// fp32 Adam with bf16 params and grads moves 28 B/element with masters (read master, g, m, v;
// write master, m, v, param), 26 with remainders, 22 with stochastic rounding.
#pragma once
#include <type_traits>

#include "driver.h"
#include "param_access.h"

namespace fused_optim::cpu {

// Inlined into each optimizer's FO_CPU_CLONES chunk function, so it vectorizes per ISA clone.
// grad_divisor: GradScaler's scale over the clip coefficient (1 without either), divided out
// of each grad in the math dtype as the reference does, instead of a divided copy of the grads.
// MODE: how the param is stored (param_access.h); x: the chunk's master/remainder data.
template <bool AMSGRAD, int MODE = math::kPlainParam, class P, class T, class Update>
FO_INLINE void moment_loop(P* __restrict p, const P* __restrict g, T* __restrict m,
                           T* __restrict v, T* __restrict vmax, int64_t n, const T grad_divisor,
                           Update&& update, const ParamExtra& x = {}) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = load_param<MODE>(p, x, i), mi = m[i], vi = v[i];
    T vmaxi = AMSGRAD ? vmax[i] : T(0);
    update(pi, T(load_value(g[i])) / grad_divisor, mi, vi, vmaxi);
    store_param<MODE>(p, x, i, pi);
    m[i] = mi;
    v[i] = vi;
    if (AMSGRAD) vmax[i] = vmaxi;
  }
}

// Checks the lists param, grad, exp_avg, exp_avg_sq[, max_exp_avg_sq when amsgrad][, masters
// or remainders in those param modes]; returns the param storage.
inline ParamStorage check_moment_lists(const char* op, const AddressLists& lists,
                                       const std::vector<int64_t>& numels, DType param, bool amsgrad,
                                       int param_mode, uint32_t seed,
                                       const std::vector<uint32_t>& tensor_indices,
                                       const std::vector<double>& steps) {
  const DType state = state_dtype_for(param);
  std::vector<DType> roles{param, param, state, state};
  if (amsgrad) roles.push_back(state);
  ParamStorage storage = param_storage(op, lists, numels, param, param_mode, seed, tensor_indices, steps, roles);
  check_lists(op, lists, roles, numels);
  return storage;
}

// Calls chunk(amsgrad_tag, tensor, p, g, m, v, vmax, n, extra) for every chunk of the lists,
// with amsgrad_tag a std::bool_constant (vmax is null without amsgrad) and extra the chunk's
// ParamExtra.
template <class P, class Chunk>
void for_each_moment_chunk(const AddressLists& lists, const std::vector<int64_t>& numels,
                           bool amsgrad, int num_threads, const ParamStorage& storage, Chunk&& chunk) {
  using T = math_t<P>;
  const ChunkPlan plan = plan_chunks(numels);
  for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t) {
    const auto t = s.tensor;
    P* p = address<P>(lists[0][t], s.begin);
    const P* g = address<const P>(lists[1][t], s.begin);
    T* m = address<T>(lists[2][t], s.begin);
    T* v = address<T>(lists[3][t], s.begin);
    const ParamExtra x = storage.chunk(t, s.begin);
    if (amsgrad) chunk(std::true_type{}, t, p, g, m, v, address<T>(lists[4][t], s.begin), s.size, x);
    else chunk(std::false_type{}, t, p, g, m, v, static_cast<T*>(nullptr), s.size, x);
  });
}

}  // namespace fused_optim::cpu
