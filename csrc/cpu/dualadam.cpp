// InvAdam / DualAdam on the CPU. Bytes per element (fp32): read p, g, m, v; write p, m, v = 28.
#include "fused_optim/math/dualadam.h"

#include "moment_loop.h"

namespace fused_optim::cpu {
namespace {

template <int DECAY, bool BLEND, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void dualadam_chunk(P* p, const P* g, T* m, T* v, int64_t n,
                                  const math::DualAdamHyper<T> hyper, const T grad_divisor,
                                  const ParamExtra x) {
  auto h = fixed_weight_decay<DECAY>(hyper);
  h.blend = BLEND;
  moment_loop<MODE>(p, g, n, grad_divisor, x,
                    [&](T& pi, T gi, T& mi, T& vi) { math::dualadam_element(pi, gi, mi, vi, h); }, m, v);
}

// lists: param, grad, exp_avg, exp_avg_sq[, masters/remainders]. One global step.
std::vector<double> dualadam_step(const Call& call, const math::DualAdamStepArgs& a) {
  const DType pd = parse_dtype(call.where, call.dtype);
  const DType sd = parse_state_dtype(call.where, pd, call.state_dtype, false);
  std::vector<DType> roles{pd, pd, sd, sd};
  const ParamStorage storage = check_call(call, roles, Steps::kGlobal);
  // the blend weight and predicate in fp64, as the reference's dualadam_blend_weight (the build
  // does not contract 1 - t xi into an fma, so boundary steps decide as in Python)
  const double t = call.global_step + 1.0;
  double alpha = 0.0;
  const bool blend = math::dualadam_blend_weight(t, a.switch_rate, alpha);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::dualadam_hyper<T>(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, t, alpha, blend);
    // decoupled decay or none (kL2Decay never occurs); the blend flag as a second constant
    with_constant<2>(weight_decay_mode(h), [&](auto decay) {
      with_constant<2>(int(blend), [&](auto blending) {
        dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
          for_each_call_element_chunk(call, storage, [&](const Chunk& c) {
            dualadam_chunk<decltype(decay)::value, bool(decltype(blending)::value), decltype(mode)::value, P>(
                c.role<P>(0), c.role<const P>(1), c.role<T>(2), c.role<T>(3), c.size, h, T(call.grad_divisor),
                c.extra);
          });
        });
      });
    });
  });
  return {};
}

const Registration<math::DualAdamStepArgs> registered("dualadam_step", dualadam_step);

}  // namespace
}  // namespace fused_optim::cpu
