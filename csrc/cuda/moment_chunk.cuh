// The chunk walk of the Adam-family kernels (Adam/AdamW, AdaMomentum, DualAdam): each element
// reads p, g, m, v (and vmax with amsgrad), is updated in registers by the optimizer's math
// and writes p, m, v (, vmax) back. Mirrors csrc/cpu/moment_loop.h. bf16/fp16 params with a
// master copy, a remainder or stochastic rounding take the same one pass (param_access.cuh):
// fp32-state Adam on bf16 params moves 28 B/element with masters, 26 with remainders, 22 with
// stochastic rounding.
#pragma once
#include "fused_optim/multi_tensor.cuh"
#include "param_access.cuh"

namespace fused_optim::cuda {

// Roles of the table: 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (AMSGRAD),
// then the masters/remainders of MODE 1/2 (param_access.cuh). update(p, g, m, v, vmax) works
// on math-type registers; g is already divided by grad_scale. sr_key: stochastic rounding's
// key of the chunk's tensor and step (MODE 3).
template <bool AMSGRAD, int MODE, class P, class S, int NROLES, class Update>
__device__ FO_INLINE void moment_chunk(const TensorTable<NROLES>& table, const ChunkSpan& s,
                                       const AmpArgs& amp, uint32_t sr_key, Update&& update) {
  using T = math_t<P>;
  constexpr int W = kPackWidth<P>;
  const ParamChunk<MODE, P, W> params(table, s, AMSGRAD ? 5 : 4, sr_key);
  const P* g = role_address<const P>(table, 1, s);
  S* m = role_address<S>(table, 2, s);
  S* v = role_address<S>(table, 3, s);
  S* vmax = nullptr;
  if constexpr (AMSGRAD) vmax = role_address<S>(table, 4, s);
  const bool aligned = params.aligned() && pack_aligned<W>(g) && pack_aligned<W>(m) &&
                       pack_aligned<W>(v) && (!AMSGRAD || pack_aligned<W>(vmax));
  const T scale = grad_divisor<T>(amp);
  const int64_t n = s.size;
  for_each_pack<W>(n, aligned, [&](int64_t i, bool full) {
    P pr[W] = {}, gr[W] = {};
    S mr[W] = {}, vr[W] = {}, xr[W] = {};
    T pv[W];
    params.load(pv, pr, i, n, full);
    load_pack(gr, g, i, n, full);
    load_pack(mr, m, i, n, full);
    load_pack(vr, v, i, n, full);
    if constexpr (AMSGRAD) load_pack(xr, vmax, i, n, full);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      T mi = T(load_value(mr[j])), vi = T(load_value(vr[j]));
      T xi = T(load_value(xr[j]));
      update(pv[j], T(load_value(gr[j])) / scale, mi, vi, xi);
      store_value(mr[j], mi);
      store_value(vr[j], vi);
      store_value(xr[j], xi);
    }
    params.store(pv, pr, i, n, full);
    store_pack(m, mr, i, n, full);
    store_pack(v, vr, i, n, full);
    if constexpr (AMSGRAD) store_pack(vmax, xr, i, n, full);
  });
}

}  // namespace fused_optim::cuda
