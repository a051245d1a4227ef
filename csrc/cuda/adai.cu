// Adai on CUDA: a reduction pass, then one update pass (the global mean of vhat sits between
// the second-moment update and the momentum/param update).
// Pass 1 reads g and v (and p for coupled L2) and writes nothing but one fp64 partial sum of
// the new vhat per chunk; a one-block kernel adds the partials in the fixed tree of
// reduction.h into a device scalar. No float atomics: reruns are bitwise identical. The mean
// (the optimizer divides by the count on the device) reaches pass 2 as a device address, so
// nothing waits for the host.
// Bytes per element (fp32): pass 1 reads g, v = 8 (+4 for p with L2); pass 2 reads p, g, m,
// v, beta1_prod and writes p, m, v, beta1_prod = 36. Total 44 (48 with L2). The CPU backend's
// 40 carries sum(v) between steps to skip reading v in pass 1; here pass 1 recomputes the new
// v from v itself, which keeps the passes free of state outside the tensors (a captured graph
// or a state loaded from elsewhere needs no bookkeeping) for 4 more bytes.
#include "fused_optim/math/adai.h"

#include "driver.h"
#include "adai_pass1.cuh"
#include "param_access.cuh"

namespace fused_optim::cuda {
namespace {

template <class T>
struct AdaiSumKernelArgs {
  math::AdaiHyper<T> h;
  double beta2;
  double* partials;  // one per chunk, indexed from the table's chunk_base
};

// Roles: 0 param (read only with L2), 1 grad, 2 exp_avg_sq, 3 masters/remainders (MODE 1/2:
// p's value with L2, param_access.cuh).
template <int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    adai_vhat_sum_kernel(const __grid_constant__ TensorTable<NROLES> table, const AdaiSumKernelArgs<math_t<P>> a,
                         const AmpArgs amp) {
  using T = math_t<P>;
  const ChunkSpan s = table_chunk(table);
  const T bc2 = T(math::adai_bias_correction2(a.beta2, step_before(table, s.tensor) + 1.0));
  double sum = 0.0;  // this thread's elements in a fixed order, then the block's fixed tree
  for_each_pass1_element<MODE, P, S>(table, s, amp, a.h.apply_l2, [&](bool in_chunk, T p, T g, T v) {
    const T vhat = math::adai_vhat_element(p, g, v, a.h, bc2);
    if (in_chunk) sum += double(vhat);
  });
  const double block_total = block_sum(sum);
  if (threadIdx.x == 0) a.partials[table.chunk_base + blockIdx.x] = block_total;
}

// One block: the partials' fixed tree (reduction.h), level by level; destroys the partials.
__global__ void __launch_bounds__(kBlockThreads) tree_total_kernel(double* partials, int64_t n,
                                                                   double* out) {
  for (int64_t width = 1; width < n; width *= 2) {
    for (int64_t pair = threadIdx.x; pair * 2 * width + width < n; pair += blockDim.x)
      tree_sum_step(partials, n, width, pair);
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = n > 0 ? partials[0] : 0.0;
}

template <class T>
struct AdaiUpdateKernelArgs {
  math::AdaiHyper<T> h;
  double beta2;
  const double* vbar;  // device scalar: the global mean of vhat
};

// Roles: 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq, 4 beta1_prod, 5 masters/remainders (MODE
// 1/2, param_access.cuh).
template <int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    adai_update_kernel(const __grid_constant__ TensorTable<NROLES> table,
                       const AdaiUpdateKernelArgs<math_t<P>> a, const AmpArgs amp, const uint32_t seed) {
  using T = math_t<P>;
  constexpr int W = kPackWidth<P>;
  if (step_skipped(amp)) return;
  const ChunkSpan s = table_chunk(table);
  const double step = step_before(table, s.tensor) + 1.0;
  const T bc2 = T(math::adai_bias_correction2(a.beta2, step));
  const T vbar = T(*a.vbar);  // rounded to the state precision, as the reference does
  const ParamChunk<MODE, P, W> params(table, s, 5,
                                      math::stochastic_key(seed, table.tags[s.tensor], uint32_t(uint64_t(step))));
  const P* g = role_address<const P>(table, 1, s);
  S* m = role_address<S>(table, 2, s);
  S* v = role_address<S>(table, 3, s);
  S* b = role_address<S>(table, 4, s);
  const bool aligned = params.aligned() && pack_aligned<W>(g) && pack_aligned<W>(m) &&
                       pack_aligned<W>(v) && pack_aligned<W>(b);
  const T scale = grad_divisor<T>(amp);
  const int64_t n = s.size;
  for_each_pack<W>(n, aligned, [&](int64_t i, bool full) {
    P pr[W] = {}, gr[W] = {};
    S mr[W] = {}, vr[W] = {}, br[W] = {};
    T pv[W];
    params.load(pv, pr, i, n, full);
    load_pack(gr, g, i, n, full);
    load_pack(mr, m, i, n, full);
    load_pack(vr, v, i, n, full);
    load_pack(br, b, i, n, full);
#pragma unroll
    for (int j = 0; j < W; ++j) {
      T mi = T(load_value(mr[j])), vi = T(load_value(vr[j]));
      T bi = T(load_value(br[j]));
      math::adai_update_element(pv[j], T(load_value(gr[j])) / scale, mi, vi, bi, a.h, bc2, vbar);
      store_value(mr[j], mi);
      store_value(vr[j], vi);
      store_value(br[j], bi);
    }
    params.store(pv, pr, i, n, full);
    store_pack(m, mr, i, n, full);
    store_pack(v, vr, i, n, full);
    store_pack(b, br, i, n, full);
  });
}

// Pass 1. lists: param, grad, exp_avg_sq (read only)[, masters/remainders]. Writes the
// group's sum of the new vhat to the float64 device scalar at call.out; call.partials is a
// float64 device buffer of at least chunk_count(numels) entries (scratch).
std::vector<double> adai_second_moment(const Call& call, const math::AdaiSecondMomentArgs& a) {
  const CallDTypes d = call_dtypes(call);
  std::vector<DType> roles{d.param, d.param, d.state};
  check_call(call, roles, Steps::kPerTensor);
  check_scalar(call.where, "out", call.out, 8, true);
  const int64_t chunks = chunk_count(call.numels);
  if (chunks > 0) check_scalar(call.where, "partials", call.partials, 8, true);
  if (call.partials_len < chunks)
    fail(call.where, "partials has " + std::to_string(call.partials_len) + " entries for " + std::to_string(chunks) +
                         " chunks");
  const AmpArgs amp = amp_args(call, false);  // pass 1 writes nothing: found_inf is the update's
  auto* partial_sums = reinterpret_cast<double*>(call.partials);
  dispatch_types(d.param, d.state, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    using T = math_t<P>;
    // pass 1 needs only beta2 and the L2 term; lr, beta0 and eps enter in pass 2
    const AdaiSumKernelArgs<T> k{math::adai_hyper<T>(0.0, 0.0, a.beta2, 0.0, a.weight_decay, a.decoupled), a.beta2,
                                 partial_sums};
    int64_t total = 0;
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_storage(3, MODE);
      total = launch_over<R>(call, adai_vhat_sum_kernel<MODE, P, decltype(stag), R>, k, amp);
    });
    const DeviceGuard guard(call.where, call.device);
    launch(call.where, tree_total_kernel, 1, call.stream, partial_sums, total, reinterpret_cast<double*>(call.out));
  });
  return {};
}

// Pass 2. lists: param, grad, exp_avg, exp_avg_sq, beta1_prod[, masters/remainders].
// call.vbar_address: the float64 device scalar holding the global mean of vhat (never copied
// to the host).
std::vector<double> adai_update(const Call& call, const math::AdaiUpdateArgs& a) {
  const CallDTypes d = call_dtypes(call);
  std::vector<DType> roles{d.param, d.param, d.state, d.state, d.state};
  check_call(call, roles, Steps::kPerTensor);
  check_scalar(call.where, "vbar", call.vbar_address, 8, true);
  const AmpArgs amp = amp_args(call);
  dispatch_types(d.param, d.state, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    using T = math_t<P>;
    const AdaiUpdateKernelArgs<T> k{math::adai_hyper<T>(a.lr, a.beta0, a.beta2, a.eps, a.weight_decay, a.decoupled),
                                    a.beta2, reinterpret_cast<const double*>(call.vbar_address)};
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_storage(5, MODE);
      launch_over<R>(call, adai_update_kernel<MODE, P, decltype(stag), R>, k, amp, call.seed);
    });
  });
  return {};
}

const Registration<math::AdaiSecondMomentArgs> registered_pass1("adai_second_moment", adai_second_moment);
const Registration<math::AdaiUpdateArgs> registered_update("adai_update", adai_update);

}  // namespace
}  // namespace fused_optim::cuda
