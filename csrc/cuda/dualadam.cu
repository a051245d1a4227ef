// InvAdam / DualAdam on CUDA: one launch per call (per 510 tensors, TensorTable<4>::kCapacity).
// Bytes per element (fp32): read p, g, m, v; write p, m, v = 28.
#include "fused_optim/math/dualadam.h"

#include "driver.h"
#include "moment_chunk.cuh"

namespace fused_optim::cuda {
namespace {

struct DualAdamArgs {
  double lr, beta1, beta2, eps, weight_decay, switch_rate;
  // the global step count before this step: read from the device when the address is set
  double global_step;
  const double* global_step_address;
};

template <int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    dualadam_kernel(const __grid_constant__ TensorTable<NROLES> table, const DualAdamArgs a,
                    const AmpArgs amp, const uint32_t seed) {
  using T = math_t<P>;
  if (step_skipped(amp)) return;
  const ChunkSpan s = table_chunk(table);
  const double t = (a.global_step_address != nullptr ? *a.global_step_address : a.global_step) + 1.0;
  // the blend predicate in fp64 on the device too, so a captured graph follows the step
  double alpha = 0.0;
  const bool blend = math::dualadam_blend_weight(t, a.switch_rate, alpha);
  const math::DualAdamHyper<T> h =
      math::dualadam_hyper<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, t, alpha, blend);
  const uint32_t key = math::stochastic_key(seed, table.tags[s.tensor], uint32_t(uint64_t(t)));
  moment_chunk<false, MODE, P, S>(table, s, amp, key, [&](T& p, T g, T& m, T& v, T&) {
    math::dualadam_element(p, g, m, v, h);
  });
}

}  // namespace

void dualadam_step(const AddressLists& lists, const std::vector<int64_t>& numels, int dtype,
                   int state_dtype, double lr, double beta1, double beta2, double eps,
                   double weight_decay, double switch_rate, double global_step,
                   uintptr_t global_step_address, uintptr_t grad_scale, uintptr_t found_inf,
                   int device, uintptr_t stream, int param_mode, uint32_t seed,
                   const std::vector<uint32_t>& tensor_indices) {
  const char* op = "dualadam_step";
  const DType pd = parse_dtype(op, dtype), sd = parse_state_dtype(op, pd, state_dtype);
  std::vector<DType> roles{pd, pd, sd, sd};
  check_param_mode(op, pd, param_mode, tensor_indices, numels.size(), roles);
  check_lists(op, lists, roles, numels);
  check_finite(op, {{"lr", lr}, {"beta1", beta1}, {"beta2", beta2}, {"eps", eps}, {"weight_decay", weight_decay},
                    {"switch_rate", switch_rate}, {"global_step", global_step}});
  check_scalar(op, "global_step", global_step_address, 8, false);
  if (global_step_address == 0 && !(global_step >= 0.0))
    fail(op, "global_step must be >= 0");
  check_scalar(op, "grad_scale", grad_scale, 4, false);
  check_scalar(op, "found_inf", found_inf, 4, false);
  const std::vector<double> no_values;
  const std::vector<uintptr_t> no_addresses;
  const TensorLists tl{lists, numels, no_values, no_addresses, &tensor_indices};
  const AmpArgs amp{reinterpret_cast<const float*>(grad_scale), reinterpret_cast<const float*>(found_inf)};
  const DualAdamArgs a{lr, beta1, beta2, eps, weight_decay, switch_rate, global_step,
                       reinterpret_cast<const double*>(global_step_address)};
  dispatch_types(pd, sd, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    dispatch_param_mode<P>(param_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_params(4, MODE);
      launch_over<R>(op, dualadam_kernel<MODE, P, decltype(stag), R>, tl, device, stream, a, amp, seed);
    });
  });
}

}  // namespace fused_optim::cuda
