// Adai's pass 1 on CUDA when max_grad_norm clips the grads (reference: adai_clip_sums; the
// CPU mirror is csrc/cpu/adai_clip.cpp, the shared terms math/clip.h). The clip coefficient
// needs the norm of ALL grads and the mean of vhat needs the clipped grads: one read of g and v
// (and p for coupled L2) yields this group's norm part and its sum of vhat as a quadratic in
// the coefficient, evaluated on the device by the optimizer once the norm is known.
// Bytes per element (fp32): read g, v = 8 (+4 for p with L2), replacing a norm pass (4) plus
// the plain pass 1 (8); pass 2 (adai_update, 36 B) then clips in registers.
// Sums in fp64 in a fixed order (per thread, the block's tree, the partials' tree); the inf
// norms' max/min is order-free. No atomics: reruns are bitwise identical.
#include <cmath>

#include "fused_optim/math/adai.h"
#include "fused_optim/math/clip.h"

#include "driver.h"
#include "adai_pass1.cuh"
#include "param_access.cuh"

namespace fused_optim::cuda {
namespace {

struct ClipSumArgs {
  double beta2, l2_weight_decay, norm_type;
  int norm_kind;     // math::NormKind, uniform over the launch (a branch, not a template:
                     // 5 kinds x 7 dtype pairs would be 35 kernels for one light pass)
  double* partials;  // 4 x total_chunks: norm parts | c0 | c1 | c2, by global chunk index
  int64_t total_chunks;
};

__device__ FO_INLINE double extremum(int kind, double a, double b) {
  return kind == math::kNormMax ? math::norm_extremum<math::kNormMax>(a, b)
                                : math::norm_extremum<math::kNormMin>(a, b);
}

// The block's max/min of one double per thread (valid in thread 0); order-free.
__device__ FO_INLINE double block_extremum(int kind, double value) {
  __shared__ double values[kBlockThreads];
  values[threadIdx.x] = value;
  __syncthreads();
  for (int width = kBlockThreads / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width)
      values[threadIdx.x] = extremum(kind, values[threadIdx.x], values[threadIdx.x + width]);
    __syncthreads();
  }
  return values[0];
}

// Roles: 0 param (read only with L2), 1 grad, 2 exp_avg_sq, 3 masters/remainders (MODE 1/2:
// p's value with L2, param_access.cuh).
template <int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    adai_clip_sums_kernel(const __grid_constant__ TensorTable<NROLES> table, const ClipSumArgs a,
                          const AmpArgs amp) {
  using T = math_t<P>;
  const ChunkSpan s = table_chunk(table);
  const bool l2 = a.l2_weight_decay != 0.0;
  const int kind = a.norm_kind;
  const bool is_extremum = math::norm_is_extremum(kind);
  // this thread's elements in a fixed order, widened to fp64 (products of two fp32 values are
  // exact in fp64)
  double norm = math::norm_identity(kind), v_sum = 0.0, gg = 0.0, gp = 0.0, pp = 0.0;
  for_each_pass1_element<MODE, P, S>(table, s, amp, l2, [&](bool in_chunk, T p, T g, T v) {
    if (!in_chunk) return;
    const double gj = double(g);
    v_sum += double(v);
    gg += gj * gj;
    if (is_extremum) norm = extremum(kind, norm, fabs(gj));
    else if (kind == math::kNormOne) norm += math::norm_term<math::kNormOne>(gj, a.norm_type);
    else if (kind == math::kNormPower) norm += math::norm_term<math::kNormPower>(gj, a.norm_type);
    if (l2) {
      const double pj = double(p);
      gp += gj * pj;
      pp += pj * pj;
    }
  });
  // (every thread takes the same branches: the barriers inside are uniform)
  v_sum = block_sum(v_sum);
  gg = block_sum(gg);
  if (l2) {
    gp = block_sum(gp);
    pp = block_sum(pp);
  }
  if (kind == math::kNormTwo) norm = gg;
  else norm = is_extremum ? block_extremum(kind, norm) : block_sum(norm);
  if (threadIdx.x == 0) {
    const double bc2 = math::adai_bias_correction2(a.beta2, step_before(table, s.tensor) + 1.0);
    const auto terms = math::adai_clip_terms(v_sum, gg, gp, pp, a.beta2, a.l2_weight_decay, bc2);
    const int64_t c = table.chunk_base + blockIdx.x;
    a.partials[c] = norm;
    a.partials[a.total_chunks + c] = terms.c0;
    a.partials[2 * a.total_chunks + c] = terms.c1;
    a.partials[3 * a.total_chunks + c] = terms.c2;
  }
}

// Block k (of 4) totals partials [k n, (k + 1) n) into out[k]: the fixed tree of reduction.h
// (level by level), or the max/min for the inf norms' part. Destroys the partials.
__global__ void __launch_bounds__(kBlockThreads) clip_totals_kernel(double* partials, int64_t n,
                                                                    int kind, double* out) {
  const int k = int(blockIdx.x);
  double* values = partials + k * n;
  if (k == 0 && math::norm_is_extremum(kind)) {  // uniform over the block
    double e = math::norm_identity(kind);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) e = extremum(kind, e, values[i]);
    e = block_extremum(kind, e);
    if (threadIdx.x == 0) out[0] = e;
    return;
  }
  for (int64_t width = 1; width < n; width *= 2) {
    for (int64_t pair = threadIdx.x; pair * 2 * width + width < n; pair += blockDim.x)
      tree_sum_step(values, n, width, pair);
    __syncthreads();
  }
  if (threadIdx.x == 0) out[k] = n > 0 ? values[0] : 0.0;
}

// Pass 1 when max_grad_norm clips the grads. lists: param, grad, exp_avg_sq (read
// only)[, masters/remainders]. Writes {norm part, c0, c1, c2} to the 4 float64 device values at
// call.out: the group's part of the grad norm of order norm_type and its sum of vhat as
// c0 + c1 c + c2 c^2 in the clip coefficient c; call.partials: float64 scratch of at least
// 4 x chunk_count(numels) entries.
std::vector<double> adai_clip_sums(const Call& call, const math::AdaiClipSumsArgs& a) {
  const CallDTypes d = call_dtypes(call);
  std::vector<DType> roles{d.param, d.param, d.state};
  check_call(call, roles, Steps::kPerTensor);
  check_scalar(call.where, "out", call.out, 8, true);
  const int64_t chunks = chunk_count(call.numels);
  if (chunks > 0) check_scalar(call.where, "partials", call.partials, 8, true);
  if (call.partials_len < 4 * chunks)
    fail(call.where, "partials has " + std::to_string(call.partials_len) + " entries for 4 x " +
                         std::to_string(chunks) + " chunks");
  const AmpArgs amp = amp_args(call, false);  // pass 1 writes nothing: found_inf is the update's
  auto* partial_sums = reinterpret_cast<double*>(call.partials);
  const int kind = math::norm_kind(a.norm_type.q);
  const ClipSumArgs k{a.beta2, !a.decoupled ? a.weight_decay : 0.0, a.norm_type.q, kind, partial_sums, chunks};
  dispatch_types(d.param, d.state, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_storage(3, MODE);
      launch_over<R>(call, adai_clip_sums_kernel<MODE, P, decltype(stag), R>, k, amp);
    });
  });
  const DeviceGuard guard(call.where, call.device);
  launch(call.where, clip_totals_kernel, 4, call.stream, partial_sums, chunks, kind,
         reinterpret_cast<double*>(call.out));
  return {};
}

const Registration<math::AdaiClipSumsArgs> registered("adai_clip_sums", adai_clip_sums);

}  // namespace
}  // namespace fused_optim::cuda
