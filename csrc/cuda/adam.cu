// Adam / AdamW on CUDA: one launch per call (per 450 tensors, TensorTable<5>::kCapacity).
// Bytes per element (fp32): read p, g, m, v; write p, m, v = 28 (+8 with amsgrad: read and
// write max_exp_avg_sq).
#include "fused_optim/math/adam.h"

#include "driver.h"
#include "moment_chunk.cuh"

namespace fused_optim::cuda {
namespace {

template <class T>
struct AdamArgs {
  math::AdamHyper<T> h;
  double lr, beta1, beta2;  // for the per-tensor fp64 scalars of each tensor's step
};

template <bool AMSGRAD, int MODE, class P, class S, int NROLES>
__global__ void __launch_bounds__(kBlockThreads)
    adam_kernel(const __grid_constant__ TensorTable<NROLES> table, const AdamArgs<math_t<P>> a,
                const AmpArgs amp, const uint32_t seed) {
  using T = math_t<P>;
  if (step_skipped(amp)) return;
  const ChunkSpan s = table_chunk(table);
  // the bias corrections in fp64 from the step (host value or device counter)
  const double step = step_before(table, s.tensor) + 1.0;
  const math::AdamScalars sc = math::adam_scalars(a.lr, a.beta1, a.beta2, step);
  const T step_size = T(sc.step_size), bc2_sqrt = T(sc.bc2_sqrt);
  const uint32_t key = math::stochastic_key(seed, table.tags[s.tensor], uint32_t(uint64_t(step)));
  moment_chunk<AMSGRAD, MODE, P, S>(table, s, amp, key, [&](T& p, T g, T& m, T& v, T& vmax) {
    math::adam_element<AMSGRAD>(p, g, m, v, vmax, a.h, step_size, bc2_sqrt);
  });
}

}  // namespace

void adam_step(const AddressLists& lists, const std::vector<int64_t>& numels,
               const std::vector<double>& step_values, const std::vector<uintptr_t>& step_addresses,
               int dtype, int state_dtype, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool decoupled, bool amsgrad, bool maximize,
               uintptr_t grad_scale, uintptr_t found_inf, int device, uintptr_t stream,
               int param_mode, uint32_t seed, const std::vector<uint32_t>& tensor_indices) {
  const char* op = "adam_step";
  const DType pd = parse_dtype(op, dtype), sd = parse_state_dtype(op, pd, state_dtype);
  std::vector<DType> roles{pd, pd, sd, sd};
  if (amsgrad) roles.push_back(sd);
  check_param_mode(op, pd, param_mode, tensor_indices, numels.size(), roles);
  check_lists(op, lists, roles, numels);
  check_finite(op, {{"lr", lr}, {"beta1", beta1}, {"beta2", beta2}, {"eps", eps}, {"weight_decay", weight_decay}});
  check_steps(op, step_values, step_addresses, numels.size());
  check_scalar(op, "grad_scale", grad_scale, 4, false);
  check_scalar(op, "found_inf", found_inf, 4, false);
  const TensorLists tl{lists, numels, step_values, step_addresses, &tensor_indices};
  const AmpArgs amp{reinterpret_cast<const float*>(grad_scale), reinterpret_cast<const float*>(found_inf)};
  dispatch_types(pd, sd, [&](auto ptag, auto stag) {
    using P = decltype(ptag);
    using S = decltype(stag);
    using T = math_t<P>;
    const AdamArgs<T> a{math::adam_hyper<T>(lr, beta1, beta2, eps, weight_decay, decoupled, maximize),
                        lr, beta1, beta2};
    dispatch_param_mode<P>(param_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, R = roles_with_params(5, MODE);
      if (amsgrad) launch_over<R>(op, adam_kernel<true, MODE, P, S, R>, tl, device, stream, a, amp, seed);
      else launch_over<R>(op, adam_kernel<false, MODE, P, S, R>, tl, device, stream, a, amp, seed);
    });
  });
}

}  // namespace fused_optim::cuda
