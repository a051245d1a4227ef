// AdaMomentum on the CPU. Bytes per element (fp32): read p, g, m, v; write p, m, v = 28
// (+8 with amsgrad).
#include "fused_optim/math/adamomentum.h"

#include "moment_loop.h"

namespace fused_optim::cpu {
namespace {

template <bool AMSGRAD, int DECAY, int DENOMINATOR, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void adamomentum_chunk(P* p, const P* g, T* m, T* v, T* vmax, int64_t n,
                                     const math::AdaMomentumHyper<T> hyper, const T step_size,
                                     const T bc2_sqrt, const T grad_divisor, const ParamExtra x) {
  const auto h = fixed_weight_decay<DECAY>(hyper);
  constexpr auto denominator = math::AdaMomentumDenominator(DENOMINATOR);
  if constexpr (AMSGRAD) {
    moment_loop<MODE>(p, g, n, grad_divisor, x, [&](T& pi, T gi, T& mi, T& vi, T& vmaxi) {
      math::adamomentum_element<true>(pi, gi, mi, vi, vmaxi, h, step_size, bc2_sqrt, denominator);
    }, m, v, vmax);
  } else {
    moment_loop<MODE>(p, g, n, grad_divisor, x, [&](T& pi, T gi, T& mi, T& vi) {
      T unused = T(0);
      math::adamomentum_element<false>(pi, gi, mi, vi, unused, h, step_size, bc2_sqrt, denominator);
    }, m, v);
  }
}

// lists: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (read with amsgrad, else may be
// empty)[, masters/remainders]
std::vector<double> adamomentum_step(const Call& call, const math::AdaMomentumStepArgs& a) {
  const DType pd = parse_dtype(call.where, call.dtype);
  const DType sd = parse_state_dtype(call.where, pd, call.state_dtype, false);
  std::vector<DType> roles{pd, pd, sd, sd, sd};
  const std::vector<size_t> unread = a.amsgrad ? std::vector<size_t>{} : std::vector<size_t>{4};
  const ParamStorage storage = check_call(call, roles, Steps::kPerTensor, unread);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::moment_hyper<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.decoupled);
    std::vector<math::AdaMomentumScalars> scalars(call.numels.size());
    for (size_t t = 0; t < scalars.size(); ++t)
      scalars[t] = math::adamomentum_scalars(a.lr, a.beta1, a.beta2, step_count(call, t), a.rectify);
    with_constant<kWeightDecayModes>(weight_decay_mode(h), [&](auto decay) {
      with_constant<2>(int(a.amsgrad), [&](auto amsgrad) {
        dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
          constexpr bool AMSGRAD = decltype(amsgrad)::value;
          for_each_call_element_chunk(call, storage, [&](const Chunk& c) {
            const auto& sc = scalars[size_t(c.tensor)];
            with_constant<3>(sc.denominator, [&](auto denominator) {
              adamomentum_chunk<AMSGRAD, decltype(decay)::value, decltype(denominator)::value,
                                decltype(mode)::value, P>(
                  c.role<P>(0), c.role<const P>(1), c.role<T>(2), c.role<T>(3), AMSGRAD ? c.role<T>(4) : nullptr,
                  c.size, h, T(sc.step_size), T(sc.bc2_sqrt), T(call.grad_divisor), c.extra);
            });
          });
        });
      });
    });
  });
  return {};
}

const Registration<math::AdaMomentumStepArgs> registered("adamomentum_step", adamomentum_step);

}  // namespace
}  // namespace fused_optim::cpu
