// Adai on the CPU: a light reduction pass, then one update pass (the global mean of vhat sits
// between the second-moment update and the momentum/param update).
// The mean needs sum(v_new) = beta2 sum(v) + (1 - beta2) sum(g_eff^2) per tensor (math/adai.h),
// with sum(v) carried from the previous update pass, so pass 1 reads only g.
// Bytes per element (fp32): pass 1 reads g = 4 (+4 reading p for coupled L2); pass 2 reads
// p, g, m, v, beta1_prod and writes p, m, v, beta1_prod = 36, then sums each chunk's new v
// while it is in cache. Total 40 (44 with L2), against 44 (48) for the textbook split of
// pass 1 = v update, pass 2 = the rest.
#include "fused_optim/math/adai.h"

#include <cmath>
#include <limits>

#include "ops.h"
#include "adai_checks.h"
#include "param_access.h"

namespace fused_optim::cpu {
namespace {

// COUPLED_L2 is a template flag so the decoupled/no-decay loop never loads p (with L2, MODE
// says where p's value is: the param, its master or param + remainder, param_access.h).
template <bool COUPLED_L2, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES double adai_grad_sq_chunk(const P* __restrict p, const P* __restrict g, int64_t n,
                                        const math::AdaiHyper<T> hyper, const T grad_divisor,
                                        const ParamExtra x) {
  const auto h = fixed_weight_decay<COUPLED_L2 ? kL2Decay : kNoDecay>(hyper);
  return lane_sum(n, [&](int64_t i) {
    const T pi = COUPLED_L2 ? load_param<MODE>(p, x, i) : T(0);
    return math::adai_grad_sq_element(pi, T(load_value(g[i])) / grad_divisor, h);
  });
}

template <class T>
FO_CPU_CLONES double sum_chunk(const T* __restrict x, int64_t n) {
  return lane_sum(n, [&](int64_t i) { return x[i]; });
}

// beta1_prod below the smallest normal T is stored as 0. It is a product of factors <= 1 - eps,
// so once it falls there it stays there, and 1 - beta1_prod, the only use of it, is exactly 1
// either way: params and the other states are the reference's, and beta1_prod differs from
// it by less than that smallest normal. Kept subnormal, it would be multiplied every step for
// thousands of steps at beta1 near 1 - eps, and x86 cores multiply subnormals in slow
// microcode: a 1M-element step took 2.4-3.3x as long (bench/NOTES.md). The rest of the
// arithmetic is IEEE, subnormals included, as in torch.
template <class T>
FO_INLINE T normal_or_zero(T x) {
  return std::fabs(x) < std::numeric_limits<T>::min() ? T(0) : x;
}

template <int DECAY, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void adai_update_chunk(P* __restrict p, const P* __restrict g, T* __restrict m,
                                     T* __restrict v, T* __restrict beta1_prod, int64_t n,
                                     const math::AdaiHyper<T> hyper, const T bc2, const T vbar,
                                     const T grad_divisor, const ParamExtra x) {
  const auto h = fixed_weight_decay<DECAY>(hyper);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T pi = load_param<MODE>(p, x, i), mi = m[i], vi = v[i], bpi = beta1_prod[i];
    math::adai_update_element(pi, T(load_value(g[i])) / grad_divisor, mi, vi, bpi, h, bc2, vbar);
    store_param<MODE>(p, x, i, pi);
    m[i] = mi;
    v[i] = vi;
    beta1_prod[i] = normal_or_zero(bpi);
  }
}

}  // namespace

double adai_vhat_sum(const AddressLists& lists, const std::vector<int64_t>& numels,
                     const std::vector<double>& steps, const std::vector<double>& v_sums,
                     int dtype, double beta2, double weight_decay, bool decoupled,
                     int num_threads, double grad_divisor, int param_mode, uint32_t seed,
                     const std::vector<uint32_t>& tensor_indices) {
  const char* op = "adai_vhat_sum";
  const DType pd = parse_dtype(op, dtype);
  const ParamStorage storage =
      check_adai_pass1(op, lists, numels, steps, v_sums, pd, num_threads, param_mode, seed, tensor_indices);

  return dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    // pass 1 needs only the L2 term; lr, beta0 and eps enter in pass 2
    const auto h = math::adai_hyper<T>(0.0, 0.0, beta2, 0.0, weight_decay, decoupled);
    const bool coupled_l2 = !decoupled && weight_decay != 0.0;
    const ChunkPlan plan = plan_chunks(numels);
    // one partial per chunk, combined in fixed trees: independent of the thread count
    std::vector<double> partials(size_t(plan.total()));
    dispatch_param_mode<P>(param_mode, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value;
      for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t c) {
        const auto t = s.tensor;
        const P* p = address<const P>(lists[0][t], s.begin);
        const P* g = address<const P>(lists[1][t], s.begin);
        const ParamExtra x = storage.chunk(t, s.begin);
        partials[size_t(c)] = coupled_l2 ? adai_grad_sq_chunk<true, MODE, P>(p, g, s.size, h, T(grad_divisor), x)
                                         : adai_grad_sq_chunk<false, MODE, P>(p, g, s.size, h, T(grad_divisor), x);
      });
    });
    const std::vector<double> grad_sq = per_tensor_sums(plan, partials);
    std::vector<double> terms(numels.size());
    for (size_t t = 0; t < numels.size(); ++t)
      terms[t] = math::adai_vhat_sum(v_sums[t], grad_sq[t], beta2,
                                     math::adai_bias_correction2(beta2, steps[t]));
    return tree_sum(terms.data(), int64_t(terms.size()));
  });
}

std::vector<double> adai_update(const AddressLists& lists, const std::vector<int64_t>& numels,
                                const std::vector<double>& steps, int dtype, double lr,
                                double beta0, double beta2, double eps, double weight_decay,
                                bool decoupled, double vbar, int num_threads,
                                double grad_divisor, int param_mode, uint32_t seed,
                                const std::vector<uint32_t>& tensor_indices,
                                const std::vector<uintptr_t>& v_sum_addresses) {
  const char* op = "adai_update";
  const DType pd = parse_dtype(op, dtype), sd = state_dtype_for(pd);
  std::vector<DType> roles{pd, pd, sd, sd, sd};
  const ParamStorage storage = param_storage(op, lists, numels, pd, param_mode, seed, tensor_indices, steps, roles);
  check_lists(op, lists, roles, numels);
  check_per_tensor(op, "steps", steps.size(), numels.size());
  check_threads(op, num_threads);
  if (!v_sum_addresses.empty()) {
    check_per_tensor(op, "v_sum_addresses", v_sum_addresses.size(), numels.size());
    check_lists(op, {v_sum_addresses}, {DType::kFloat64}, std::vector<int64_t>(numels.size(), 1));
  }

  return dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::adai_hyper<T>(lr, beta0, beta2, eps, weight_decay, decoupled);
    std::vector<double> bc2(numels.size());
    for (size_t t = 0; t < numels.size(); ++t) bc2[t] = math::adai_bias_correction2(beta2, steps[t]);
    const ChunkPlan plan = plan_chunks(numels);
    std::vector<double> partials(size_t(plan.total()));
    with_constant<kWeightDecayModes>(weight_decay_mode(h), [&](auto decay) {
      dispatch_param_mode<P>(param_mode, [&](auto mode) {
        for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t c) {
          const auto t = s.tensor;
          T* v = address<T>(lists[3][t], s.begin);
          adai_update_chunk<decltype(decay)::value, decltype(mode)::value, P>(
              address<P>(lists[0][t], s.begin), address<const P>(lists[1][t], s.begin),
              address<T>(lists[2][t], s.begin), v, address<T>(lists[4][t], s.begin), s.size, h,
              T(bc2[t]), T(vbar), T(grad_divisor), storage.chunk(t, s.begin));
          // the new v of the chunk is still in cache (256 KB): summing it costs no memory
          // traffic, and a separate loop keeps both loops simple enough to vectorize
          partials[size_t(c)] = sum_chunk(v, s.size);
        });
      });
    });
    std::vector<double> sums = per_tensor_sums(plan, partials);
    for (size_t t = 0; t < v_sum_addresses.size(); ++t) *address<double>(v_sum_addresses[t], 0) = sums[t];
    return sums;
  });
}

std::vector<double> tensor_sums(const AddressLists& lists, const std::vector<int64_t>& numels,
                                int dtype, int num_threads) {
  const char* op = "tensor_sums";
  const DType sd = parse_dtype(op, dtype);
  if (sd != DType::kFloat32 && sd != DType::kFloat64)
    throw std::invalid_argument("fused_optim._cpu.tensor_sums: states are float32 or float64");
  check_lists(op, lists, {sd}, numels);
  check_threads(op, num_threads);
  const ChunkPlan plan = plan_chunks(numels);
  std::vector<double> partials(size_t(plan.total()));
  for_each_chunk(plan, numels, num_threads, [&](ChunkSpan s, int64_t c) {
    const auto t = s.tensor;
    partials[size_t(c)] = sd == DType::kFloat32
                              ? sum_chunk(address<const float>(lists[0][t], s.begin), s.size)
                              : sum_chunk(address<const double>(lists[0][t], s.begin), s.size);
  });
  return per_tensor_sums(plan, partials);
}

}  // namespace fused_optim::cpu
