// AdaMomentum on CUDA: one launch per call (per TensorTable<5>::kCapacity tensors).
// Bytes per element (fp32): read p, g, m, v; write p, m, v = 28 (+8 with amsgrad), as Adam.
#include "fused_optim/math/adamomentum.h"

#include "driver.h"
#include "moment_chunk.cuh"

namespace fused_optim::cuda {
namespace {

template <class T>
struct AdaMomentumKernelArgs {
  math::AdaMomentumHyper<T> h;
  double lr, beta1, beta2;  // for the per-tensor fp64 scalars of each tensor's step
  bool rectify;
};

template <bool AMSGRAD, int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    adamomentum_kernel(const __grid_constant__ TensorTable<NROLES> table,
                       const AdaMomentumKernelArgs<math_t<P>> a, const AmpArgs amp, const uint32_t seed) {
  using T = math_t<P>;
  if (step_skipped(amp)) return;
  const ChunkSpan s = table_chunk(table);
  // step size, bias correction and the rectify regime in fp64 from the tensor's step
  const double step = step_before(table, s.tensor) + 1.0;
  const math::AdaMomentumScalars sc = math::adamomentum_scalars(a.lr, a.beta1, a.beta2, step, a.rectify);
  const T step_size = T(sc.step_size), bc2_sqrt = T(sc.bc2_sqrt);
  const uint32_t key = math::stochastic_key(seed, table.tags[s.tensor], uint32_t(uint64_t(step)));
  if constexpr (AMSGRAD) {
    moment_chunk<3, MODE, P, S>(table, s, amp, key, [&](T& p, T g, T& m, T& v, T& vmax) {
      math::adamomentum_element<true>(p, g, m, v, vmax, a.h, step_size, bc2_sqrt, sc.denominator);
    });
  } else {
    moment_chunk<2, MODE, P, S>(table, s, amp, key, [&](T& p, T g, T& m, T& v) {
      T unused = T(0);
      math::adamomentum_element<false>(p, g, m, v, unused, a.h, step_size, bc2_sqrt, sc.denominator);
    });
  }
}

// lists: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (read with amsgrad, else may be
// empty)[, masters/remainders]
std::vector<double> adamomentum_step(const Call& call, const math::AdaMomentumStepArgs& a) {
  const CallDTypes d = call_dtypes(call);
  std::vector<DType> roles{d.param, d.param, d.state, d.state, d.state};
  const std::vector<size_t> unread = a.amsgrad ? std::vector<size_t>{} : std::vector<size_t>{4};
  check_call(call, roles, Steps::kPerTensor, unread);
  const AmpArgs amp = amp_args(call);
  dispatch_types(d.param, d.state, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    using S = decltype(stag);
    using T = math_t<P>;
    const AdaMomentumKernelArgs<T> k{math::moment_hyper<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.decoupled),
                                     a.lr, a.beta1, a.beta2, a.rectify};
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_storage(5, MODE);
      if (a.amsgrad) launch_over<R>(call, adamomentum_kernel<true, MODE, P, S, R>, k, amp, call.seed);
      else launch_over<R>(call, adamomentum_kernel<false, MODE, P, S, R>, k, amp, call.seed);
    });
  });
  return {};
}

const Registration<math::AdaMomentumStepArgs> registered("adamomentum_step", adamomentum_step);

}  // namespace
}  // namespace fused_optim::cuda
