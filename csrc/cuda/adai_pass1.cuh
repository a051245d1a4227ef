// The element walk both forms of Adai's pass 1 share (adai_vhat_sum_kernel in adai.cu,
// adai_clip_sums_kernel in adai_clip.cu). Roles: 0 param (read only with L2, in its param
// mode), 1 grad, 2 exp_avg_sq, 3 masters/remainders (MODE 1/2, param_access.cuh).
#pragma once
#include "fused_optim/multi_tensor.cuh"
#include "param_access.cuh"

namespace fused_optim::cuda {

// Calls body(in_chunk, p, g, v) for every element slot of this thread's packs of the chunk, in
// a fixed order: g divided by the grad scale in the math dtype (as the update divides it), p
// zero without L2. in_chunk is false for the slots of a pack past the chunk's end.
template <int MODE, class P, class S, int NROLES, class Body>
__device__ FO_INLINE void for_each_pass1_element(const TensorTable<NROLES>& table, const ChunkSpan& s,
                                                 const AmpArgs& amp, bool l2, Body&& body) {
  using T = math_t<P>;
  constexpr int W = kPackWidth<P>;
  const ParamChunk<MODE, P, W> params(table, s, 3, 0u);
  const P* g = role_address<const P>(table, 1, s);
  const S* v = role_address<const S>(table, 2, s);
  const bool aligned = (!l2 || params.aligned()) && pack_aligned<W>(g) && pack_aligned<W>(v);
  const T scale = grad_divisor<T>(amp);
  const int64_t n = s.size;
  for_each_pack<W>(n, aligned, [&](int64_t i, bool full) {
    P pr[W] = {}, gr[W] = {};
    S vr[W] = {};
    T pv[W] = {};
    if (l2) params.load(pv, pr, i, n, full);
    load_pack(gr, g, i, n, full);
    load_pack(vr, v, i, n, full);
#pragma unroll
    for (int j = 0; j < W; ++j)
      body(i + j < n, pv[j], T(load_value(gr[j])) / scale, T(load_value(vr[j])));
  });
}

}  // namespace fused_optim::cuda
