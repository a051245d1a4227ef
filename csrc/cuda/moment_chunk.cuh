// The chunk walk of the one-pass kernels (Adam/AdamW, AdaMomentum, DualAdam, Lion): each
// element reads p, g and the optimizer's NSTATES states (its moments), is updated in
// registers by the optimizer's math and writes p and the states back. Mirrors
// csrc/cpu/moment_loop.h. bf16/fp16 params with a master copy, a remainder or stochastic
// rounding take the same one pass (param_access.cuh): fp32-state Adam on bf16 params moves
// 28 B/element with masters, 26 with remainders, 22 with stochastic rounding.
#pragma once
#include <cstddef>
#include <utility>

#include "fused_optim/multi_tensor.cuh"
#include "param_access.cuh"

namespace fused_optim::cuda {

namespace detail {

template <class Update, class T, size_t... I>
__device__ FO_INLINE void update_element(Update& update, T& p, T g, T (&s)[sizeof...(I)], std::index_sequence<I...>) {
  update(p, g, s[I]...);
}

}  // namespace detail

// Roles of the table: 0 param, 1 grad, 2 .. 1 + NSTATES the states this call reads (in the
// operation's order; a state after them that the call's flags leave out keeps its role), and
// in MODE 1/2 the masters/remainders as the last role (param_access.cuh). update(p, g, state...)
// works on math-type registers; g is already divided by grad_scale. States are stored as S
// (the math type or bf16). sr_key: stochastic rounding's key of the chunk's tensor and step
// (MODE 3).
template <int NSTATES, int MODE, class P, class S, int NROLES, class Update>
__device__ FO_INLINE void moment_chunk(const TensorTable<NROLES>& table, const ChunkSpan& s, const AmpArgs& amp,
                                       uint32_t sr_key, Update&& update) {
  using T = math_t<P>;
  constexpr int W = kPackWidth<P>;
  const ParamChunk<MODE, P, W> params(table, s, NROLES - 1, sr_key);
  const P* g = role_address<const P>(table, 1, s);
  S* states[NSTATES];
  bool aligned = params.aligned() && pack_aligned<W>(g);
#pragma unroll
  for (int k = 0; k < NSTATES; ++k) {
    states[k] = role_address<S>(table, 2 + k, s);
    aligned = aligned && pack_aligned<W>(states[k]);
  }
  const T scale = grad_divisor<T>(amp);
  const int64_t n = s.size;
  for_each_pack<W>(n, aligned, [&](int64_t i, bool full) {
    P pr[W] = {}, gr[W] = {};
    S sr[NSTATES][W] = {};
    T pv[W];
    params.load(pv, pr, i, n, full);
    load_pack(gr, g, i, n, full);
#pragma unroll
    for (int k = 0; k < NSTATES; ++k) load_pack(sr[k], states[k], i, n, full);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      T sv[NSTATES];
#pragma unroll
      for (int k = 0; k < NSTATES; ++k) sv[k] = T(load_value(sr[k][j]));
      detail::update_element(update, pv[j], T(load_value(gr[j])) / scale, sv, std::make_index_sequence<NSTATES>{});
#pragma unroll
      for (int k = 0; k < NSTATES; ++k) store_value(sr[k][j], sv[k]);
    }
    params.store(pv, pr, i, n, full);
#pragma unroll
    for (int k = 0; k < NSTATES; ++k) store_pack(states[k], sr[k], i, n, full);
  });
}

}  // namespace fused_optim::cuda
