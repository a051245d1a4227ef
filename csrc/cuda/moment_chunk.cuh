// The chunk walk of the Adam-family kernels (Adam/AdamW, AdaMomentum, DualAdam): each element
// reads p, g, m, v (and vmax with amsgrad), is updated in registers by the optimizer's math
// and writes p, m, v (, vmax) back. Mirrors csrc/cpu/moment_loop.h.
#pragma once
#include "fused_optim/multi_tensor.cuh"

namespace fused_optim::cuda {

// Roles of the table: 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (AMSGRAD).
// update(p, g, m, v, vmax) works on math-type registers; g is already divided by grad_scale.
template <bool AMSGRAD, class P, class S, int NROLES, class Update>
__device__ FO_INLINE void moment_chunk(const TensorTable<NROLES>& table, const ChunkSpan& s,
                                       const AmpArgs& amp, Update&& update) {
  using T = math_t<P>;
  constexpr int W = kPackWidth<P>;
  P* p = role_address<P>(table, 0, s);
  const P* g = role_address<const P>(table, 1, s);
  S* m = role_address<S>(table, 2, s);
  S* v = role_address<S>(table, 3, s);
  S* vmax = nullptr;
  if constexpr (AMSGRAD) vmax = role_address<S>(table, 4, s);
  const bool aligned = pack_aligned<W>(p) && pack_aligned<W>(g) && pack_aligned<W>(m) &&
                       pack_aligned<W>(v) && (!AMSGRAD || pack_aligned<W>(vmax));
  const T scale = grad_divisor<T>(amp);
  const int64_t n = s.size;
  for_each_pack<W>(n, aligned, [&](int64_t i, bool full) {
    P pr[W] = {}, gr[W] = {};
    S mr[W] = {}, vr[W] = {}, xr[W] = {};
    load_pack(pr, p, i, n, full);
    load_pack(gr, g, i, n, full);
    load_pack(mr, m, i, n, full);
    load_pack(vr, v, i, n, full);
    if constexpr (AMSGRAD) load_pack(xr, vmax, i, n, full);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      T pi = T(load_value(pr[j])), mi = T(load_value(mr[j])), vi = T(load_value(vr[j]));
      T xi = T(load_value(xr[j]));
      update(pi, T(load_value(gr[j])) / scale, mi, vi, xi);
      store_value(pr[j], pi);
      store_value(mr[j], mi);
      store_value(vr[j], vi);
      store_value(xr[j], xi);
    }
    store_pack(p, pr, i, n, full);
    store_pack(m, mr, i, n, full);
    store_pack(v, vr, i, n, full);
    if constexpr (AMSGRAD) store_pack(vmax, xr, i, n, full);
  });
}

}  // namespace fused_optim::cuda
