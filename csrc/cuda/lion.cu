// Lion on CUDA: one launch per call (per TensorTable<3>::kCapacity tensors).
// Bytes per element (fp32): read p, g, m; write p, m = 20.
#include "fused_optim/math/lion.h"

#include "driver.h"
#include "moment_chunk.cuh"

namespace fused_optim::cuda {
namespace {

template <int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    lion_kernel(const __grid_constant__ TensorTable<NROLES> table, const math::LionHyper<math_t<P>> h,
                const AmpArgs amp, const uint32_t seed) {
  using T = math_t<P>;
  if (step_skipped(amp)) return;
  const ChunkSpan s = table_chunk(table);
  // the step only keys stochastic rounding
  const double step = step_before(table, s.tensor) + 1.0;
  const uint32_t key = math::stochastic_key(seed, table.tags[s.tensor], uint32_t(uint64_t(step)));
  moment_chunk<1, MODE, P, S>(table, s, amp, key, [&](T& p, T g, T& m) { math::lion_element(p, g, m, h); });
}

// lists: param, grad, exp_avg[, masters/remainders]
std::vector<double> lion_step(const Call& call, const math::LionStepArgs& a) {
  const CallDTypes d = call_dtypes(call);
  std::vector<DType> roles{d.param, d.param, d.state};
  check_call(call, roles, Steps::kPerTensor);
  const AmpArgs amp = amp_args(call);
  dispatch_types(d.param, d.state, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    const auto h = math::lion_hyper<math_t<P>>(a.lr, a.beta1, a.beta2, a.weight_decay);
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_storage(3, MODE);
      launch_over<R>(call, lion_kernel<MODE, P, decltype(stag), R>, h, amp, call.seed);
    });
  });
  return {};
}

const Registration<math::LionStepArgs> registered("lion_step", lion_step);

}  // namespace
}  // namespace fused_optim::cuda
