// InvAdam / DualAdam on the CPU. Bytes per element (fp32): read p, g, m, v; write p, m, v = 28.
#include "fused_optim/math/dualadam.h"

#include "moment_loop.h"
#include "ops.h"

namespace fused_optim::cpu {
namespace {

template <int DECAY, bool BLEND, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void dualadam_chunk(P* p, const P* g, T* m, T* v, int64_t n,
                                  const math::DualAdamHyper<T> hyper, const T grad_divisor,
                                  const ParamExtra x) {
  auto h = fixed_weight_decay<DECAY>(hyper);
  h.blend = BLEND;
  moment_loop<false, MODE>(p, g, m, v, static_cast<T*>(nullptr), n, grad_divisor,
                           [&](T& pi, T gi, T& mi, T& vi, T&) { math::dualadam_element(pi, gi, mi, vi, h); }, x);
}

}  // namespace

void dualadam_step(const AddressLists& lists, const std::vector<int64_t>& numels, int dtype,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   double global_step, double alpha, bool blend, int num_threads,
                   double grad_divisor, int param_mode, uint32_t seed, const std::vector<uint32_t>& tensor_indices) {
  const char* op = "dualadam_step";
  const DType pd = parse_dtype(op, dtype);
  const ParamStorage storage = check_moment_lists(op, lists, numels, pd, false, param_mode, seed, tensor_indices,
                                                  std::vector<double>(numels.size(), global_step));
  check_threads(op, num_threads);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::dualadam_hyper<T>(lr, beta1, beta2, eps, weight_decay, global_step,
                                           alpha, blend);
    // decoupled decay or none (kL2Decay never occurs); the blend flag as a second constant
    with_constant<2>(weight_decay_mode(h), [&](auto decay) {
      with_constant<2>(int(blend), [&](auto blending) {
        dispatch_param_mode<P>(param_mode, [&](auto mode) {
          for_each_moment_chunk<P>(lists, numels, false, num_threads, storage,
                                   [&](auto, int64_t, P* p, const P* g, T* m, T* v, T*, int64_t n,
                                       const ParamExtra& x) {
            dualadam_chunk<decltype(decay)::value, bool(decltype(blending)::value), decltype(mode)::value, P>(
                p, g, m, v, n, h, T(grad_divisor), x);
          });
        });
      });
    });
  });
}

}  // namespace fused_optim::cpu
