// InvAdam / DualAdam on CUDA: one launch per call (per TensorTable<4>::kCapacity tensors).
// Bytes per element (fp32): read p, g, m, v; write p, m, v = 28.
#include "fused_optim/math/dualadam.h"

#include "driver.h"
#include "moment_chunk.cuh"

namespace fused_optim::cuda {
namespace {

struct DualAdamKernelArgs {
  math::DualAdamStepArgs h;
  // the global step count before this step: read from the device when the address is set
  double global_step;
  const double* global_step_address;
};

template <int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    dualadam_kernel(const __grid_constant__ TensorTable<NROLES> table, const DualAdamKernelArgs a,
                    const AmpArgs amp, const uint32_t seed) {
  using T = math_t<P>;
  if (step_skipped(amp)) return;
  const ChunkSpan s = table_chunk(table);
  const double t = (a.global_step_address != nullptr ? *a.global_step_address : a.global_step) + 1.0;
  // the blend predicate in fp64 on the device too, so a captured graph follows the step
  double alpha = 0.0;
  const bool blend = math::dualadam_blend_weight(t, a.h.switch_rate, alpha);
  const math::DualAdamHyper<T> h =
      math::dualadam_hyper<T>(a.h.lr, a.h.beta1, a.h.beta2, a.h.eps, a.h.weight_decay, t, alpha, blend);
  const uint32_t key = math::stochastic_key(seed, table.tags[s.tensor], uint32_t(uint64_t(t)));
  moment_chunk<2, MODE, P, S>(table, s, amp, key,
                              [&](T& p, T g, T& m, T& v) { math::dualadam_element(p, g, m, v, h); });
}

// lists: param, grad, exp_avg, exp_avg_sq[, masters/remainders]. One global step count before
// this step: a host value, or the address of a float64 device scalar.
std::vector<double> dualadam_step(const Call& call, const math::DualAdamStepArgs& a) {
  const CallDTypes d = call_dtypes(call);
  std::vector<DType> roles{d.param, d.param, d.state, d.state};
  check_call(call, roles, Steps::kGlobal);
  const AmpArgs amp = amp_args(call);
  const DualAdamKernelArgs k{a, call.global_step, reinterpret_cast<const double*>(call.global_step_address)};
  dispatch_types(d.param, d.state, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_storage(4, MODE);
      launch_over<R>(call, dualadam_kernel<MODE, P, decltype(stag), R>, k, amp, call.seed);
    });
  });
  return {};
}

const Registration<math::DualAdamStepArgs> registered("dualadam_step", dualadam_step);

}  // namespace
}  // namespace fused_optim::cuda
