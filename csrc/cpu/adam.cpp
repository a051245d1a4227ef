// Adam / AdamW on the CPU. Bytes per element (fp32): read p, g, m, v; write p, m, v = 28
// (+8 with amsgrad: read and write max_exp_avg_sq).
#include "fused_optim/math/adam.h"

#include "moment_loop.h"
#include "ops.h"

namespace fused_optim::cpu {
namespace {

template <bool AMSGRAD, int DECAY, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void adam_chunk(P* p, const P* g, T* m, T* v, T* vmax, int64_t n,
                              const math::AdamHyper<T> hyper, const T step_size, const T bc2_sqrt,
                              const T grad_divisor, const ParamExtra x) {
  const auto h = fixed_weight_decay<DECAY>(hyper);
  moment_loop<AMSGRAD, MODE>(p, g, m, v, vmax, n, grad_divisor, [&](T& pi, T gi, T& mi, T& vi, T& vmaxi) {
    math::adam_element<AMSGRAD>(pi, gi, mi, vi, vmaxi, h, step_size, bc2_sqrt);
  }, x);
}

}  // namespace

void adam_step(const AddressLists& lists, const std::vector<int64_t>& numels,
               const std::vector<double>& steps, int dtype, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool decoupled, bool amsgrad, bool maximize,
               int num_threads, double grad_divisor, int param_mode, uint32_t seed,
               const std::vector<uint32_t>& tensor_indices) {
  const char* op = "adam_step";
  const DType pd = parse_dtype(op, dtype);
  const ParamStorage storage = check_moment_lists(op, lists, numels, pd, amsgrad, param_mode, seed, tensor_indices, steps);
  check_per_tensor(op, "steps", steps.size(), numels.size());
  check_threads(op, num_threads);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::adam_hyper<T>(lr, beta1, beta2, eps, weight_decay, decoupled, maximize);
    std::vector<math::AdamScalars> scalars(numels.size());
    for (size_t t = 0; t < numels.size(); ++t)
      scalars[t] = math::adam_scalars(lr, beta1, beta2, steps[t]);
    with_constant<kWeightDecayModes>(weight_decay_mode(h), [&](auto decay) {
      dispatch_param_mode<P>(param_mode, [&](auto mode) {
        for_each_moment_chunk<P>(lists, numels, amsgrad, num_threads, storage,
                                 [&](auto ams, int64_t t, P* p, const P* g, T* m, T* v, T* vmax, int64_t n,
                                     const ParamExtra& x) {
          adam_chunk<decltype(ams)::value, decltype(decay)::value, decltype(mode)::value, P>(
              p, g, m, v, vmax, n, h, T(scalars[t].step_size), T(scalars[t].bc2_sqrt), T(grad_divisor), x);
        });
      });
    });
  });
}

}  // namespace fused_optim::cpu
