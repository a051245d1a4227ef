// AdaMomentum on the CPU. Bytes per element (fp32): read p, g, m, v; write p, m, v = 28
// (+8 with amsgrad).
#include "fused_optim/math/adamomentum.h"

#include "ops.h"

namespace fused_optim::cpu {
namespace {

template <bool AMSGRAD, class P, class T = math_t<P>>
FO_CPU_CLONES void adamomentum_chunk(P* __restrict p, const P* __restrict g, T* __restrict m,
                                     T* __restrict v, T* __restrict vmax, int64_t n,
                                     const math::AdaMomentumHyper<T> h, const T step_size,
                                     const T bc2_sqrt, const bool adaptive) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = load_value(p[i]), mi = m[i], vi = v[i];
    T vmaxi = AMSGRAD ? vmax[i] : T(0);
    math::adamomentum_element<AMSGRAD>(pi, T(load_value(g[i])), mi, vi, vmaxi, h, step_size,
                                       bc2_sqrt, adaptive);
    store_value(p[i], pi);
    m[i] = mi;
    v[i] = vi;
    if (AMSGRAD) vmax[i] = vmaxi;
  }
}

}  // namespace

void adamomentum_step(const AddressLists& lists, const std::vector<int64_t>& numels,
                      const std::vector<double>& steps, int dtype, double lr, double beta1,
                      double beta2, double eps, double weight_decay, bool decoupled, bool amsgrad,
                      bool rectify, int num_threads) {
  const char* op = "adamomentum_step";
  const DType pd = parse_dtype(op, dtype), sd = state_dtype_for(pd);
  std::vector<DType> roles{pd, pd, sd, sd};
  if (amsgrad) roles.push_back(sd);
  check_lists(op, lists, roles, numels);
  check_per_tensor(op, "steps", steps.size(), numels.size());
  check_threads(op, num_threads);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h =
        math::adamomentum_hyper<T>(lr, beta1, beta2, eps, weight_decay, decoupled, rectify);
    std::vector<math::AdaMomentumScalars> scalars(numels.size());
    for (size_t t = 0; t < numels.size(); ++t)
      scalars[t] = math::adamomentum_scalars(lr, beta1, beta2, steps[t], rectify);
    const ChunkPlan plan = plan_chunks(numels);
    for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t) {
      const auto t = s.tensor;
      auto run = [&](auto ams) {
        adamomentum_chunk<decltype(ams)::value, P>(
            address<P>(lists[0][t], s.begin), address<const P>(lists[1][t], s.begin),
            address<T>(lists[2][t], s.begin), address<T>(lists[3][t], s.begin),
            decltype(ams)::value ? address<T>(lists[4][t], s.begin) : nullptr, s.size, h,
            T(scalars[t].step_size), T(scalars[t].bc2_sqrt), scalars[t].adaptive);
      };
      if (amsgrad) run(std::true_type{}); else run(std::false_type{});
    });
  });
}

}  // namespace fused_optim::cpu
