// Lion on the CPU. Bytes per element (fp32): read p, g, m; write p, m = 20.
#include "fused_optim/math/lion.h"

#include "moment_loop.h"

namespace fused_optim::cpu {
namespace {

template <bool DECAY, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void lion_chunk(P* p, const P* g, T* m, int64_t n, const math::LionHyper<T> hyper,
                              const T grad_divisor, const ParamExtra x) {
  auto h = hyper;
  h.apply_decay = DECAY;
  moment_loop<MODE>(p, g, n, grad_divisor, x, [&](T& pi, T gi, T& mi) { math::lion_element(pi, gi, mi, h); }, m);
}

// lists: param, grad, exp_avg[, masters/remainders]. The steps key stochastic rounding only.
std::vector<double> lion_step(const Call& call, const math::LionStepArgs& a) {
  const DType pd = parse_dtype(call.where, call.dtype);
  const DType sd = parse_state_dtype(call.where, pd, call.state_dtype, false);
  std::vector<DType> roles{pd, pd, sd};
  const ParamStorage storage = check_call(call, roles, Steps::kPerTensor);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::lion_hyper<T>(a.lr, a.beta1, a.beta2, a.weight_decay);
    with_constant<2>(int(h.apply_decay), [&](auto decay) {
      dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
        for_each_call_element_chunk(call, storage, [&](const Chunk& c) {
          lion_chunk<bool(decltype(decay)::value), decltype(mode)::value, P>(
              c.role<P>(0), c.role<const P>(1), c.role<T>(2), c.size, h, T(call.grad_divisor), c.extra);
        });
      });
    });
  });
  return {};
}

const Registration<math::LionStepArgs> registered("lion_step", lion_step);

}  // namespace
}  // namespace fused_optim::cpu
