// InvAdam / DualAdam on the CPU. Bytes per element (fp32): read p, g, m, v; write p, m, v = 28.
#include "fused_optim/math/dualadam.h"

#include "ops.h"

namespace fused_optim::cpu {
namespace {

template <class P, class T = math_t<P>>
FO_CPU_CLONES void dualadam_chunk(P* __restrict p, const P* __restrict g, T* __restrict m,
                                  T* __restrict v, int64_t n, const math::DualAdamHyper<T> h) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = load_value(p[i]), mi = m[i], vi = v[i];
    math::dualadam_element(pi, T(load_value(g[i])), mi, vi, h);
    store_value(p[i], pi);
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void dualadam_step(const AddressLists& lists, const std::vector<int64_t>& numels, int dtype,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   double global_step, double alpha, bool blend, int num_threads) {
  const char* op = "dualadam_step";
  const DType pd = parse_dtype(op, dtype), sd = state_dtype_for(pd);
  check_lists(op, lists, {pd, pd, sd, sd}, numels);
  check_threads(op, num_threads);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::dualadam_hyper<T>(lr, beta1, beta2, eps, weight_decay,
                                                global_step, alpha, blend);
    const ChunkPlan plan = plan_chunks(numels);
    for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t) {
      const auto t = s.tensor;
      dualadam_chunk<P>(address<P>(lists[0][t], s.begin), address<const P>(lists[1][t], s.begin),
                        address<T>(lists[2][t], s.begin), address<T>(lists[3][t], s.begin),
                        s.size, h);
    });
  });
}

}  // namespace fused_optim::cpu
