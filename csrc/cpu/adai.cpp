// Adai on the CPU, in two passes over memory because the global mean of vhat sits between
// the second-moment update and the momentum/param update.
// Bytes per element (fp32): pass 1 reads g, v and writes v = 12 (+4 reading p for coupled
// L2); pass 2 reads p, g, m, v, beta1_prod and writes p, m, beta1_prod = 32. Total 44 (48).
#include "fused_optim/math/adai.h"

#include "fused_optim/reduction.h"
#include "ops.h"

namespace fused_optim::cpu {
namespace {

// COUPLED_L2 is a template flag so the decoupled/no-decay loop never loads p.
template <bool COUPLED_L2, class P, class T = math_t<P>>
FO_CPU_CLONES double adai_moment_chunk(const P* __restrict p, const P* __restrict g,
                                       T* __restrict v, int64_t n, const math::AdaiHyper<T> h,
                                       const T bc2) {
  double lanes[kReduceLanes] = {};
  int64_t i = 0;
  for (; i + kReduceLanes <= n; i += kReduceLanes) {
#pragma omp simd
    for (int j = 0; j < kReduceLanes; ++j) {
      T vi = v[i + j];
      const T pi = COUPLED_L2 ? T(load_value(p[i + j])) : T(0);
      lanes[j] += double(math::adai_second_moment_element(pi, T(load_value(g[i + j])), vi, h, bc2));
      v[i + j] = vi;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    T vi = v[i + j];
    const T pi = COUPLED_L2 ? T(load_value(p[i + j])) : T(0);
    lanes[j] += double(math::adai_second_moment_element(pi, T(load_value(g[i + j])), vi, h, bc2));
    v[i + j] = vi;
  }
  return combine_lanes(lanes);
}

template <class P, class T = math_t<P>>
FO_CPU_CLONES void adai_update_chunk(P* __restrict p, const P* __restrict g, T* __restrict m,
                                     const T* __restrict v, T* __restrict beta1_prod, int64_t n,
                                     const math::AdaiHyper<T> h, const T bc2, const T vbar) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = load_value(p[i]), mi = m[i], bpi = beta1_prod[i];
    math::adai_update_element(pi, T(load_value(g[i])), mi, v[i], bpi, h, bc2, vbar);
    store_value(p[i], pi);
    m[i] = mi;
    beta1_prod[i] = bpi;
  }
}

}  // namespace

double adai_second_moment(const AddressLists& lists, const std::vector<int64_t>& numels,
                          const std::vector<double>& steps, int dtype, double beta2,
                          double weight_decay, bool decoupled, int num_threads) {
  const char* op = "adai_second_moment";
  const DType pd = parse_dtype(op, dtype), sd = state_dtype_for(pd);
  check_lists(op, lists, {pd, pd, sd}, numels);
  check_per_tensor(op, "steps", steps.size(), numels.size());
  check_threads(op, num_threads);

  return dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    // pass 1 needs only beta2 and the L2 term; lr, beta0 and eps enter in pass 2
    const auto h = math::adai_hyper<T>(0.0, 0.0, beta2, 0.0, weight_decay, decoupled);
    const bool coupled_l2 = !decoupled && weight_decay != 0.0;
    std::vector<double> bc2(numels.size());
    for (size_t t = 0; t < numels.size(); ++t) bc2[t] = math::adai_bias_correction2(beta2, steps[t]);
    const ChunkPlan plan = plan_chunks(numels);
    // one partial per chunk, combined in a fixed tree: independent of the thread count
    std::vector<double> partials(size_t(plan.total()));
    for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t c) {
      const auto t = s.tensor;
      const P* p = address<const P>(lists[0][t], s.begin);
      const P* g = address<const P>(lists[1][t], s.begin);
      T* v = address<T>(lists[2][t], s.begin);
      partials[size_t(c)] = coupled_l2 ? adai_moment_chunk<true, P>(p, g, v, s.size, h, T(bc2[t]))
                                       : adai_moment_chunk<false, P>(p, g, v, s.size, h, T(bc2[t]));
    });
    return tree_sum(partials.data(), int64_t(partials.size()));
  });
}

void adai_update(const AddressLists& lists, const std::vector<int64_t>& numels,
                 const std::vector<double>& steps, int dtype, double lr, double beta0, double beta2,
                 double eps, double weight_decay, bool decoupled, double vbar, int num_threads) {
  const char* op = "adai_update";
  const DType pd = parse_dtype(op, dtype), sd = state_dtype_for(pd);
  check_lists(op, lists, {pd, pd, sd, sd, sd}, numels);
  check_per_tensor(op, "steps", steps.size(), numels.size());
  check_threads(op, num_threads);

  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::adai_hyper<T>(lr, beta0, beta2, eps, weight_decay, decoupled);
    std::vector<double> bc2(numels.size());
    for (size_t t = 0; t < numels.size(); ++t) bc2[t] = math::adai_bias_correction2(beta2, steps[t]);
    const ChunkPlan plan = plan_chunks(numels);
    for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t) {
      const auto t = s.tensor;
      adai_update_chunk<P>(address<P>(lists[0][t], s.begin), address<const P>(lists[1][t], s.begin),
                           address<T>(lists[2][t], s.begin), address<const T>(lists[3][t], s.begin),
                           address<T>(lists[4][t], s.begin), s.size, h, T(bc2[t]), T(vbar));
    });
  });
}

}  // namespace fused_optim::cpu
