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

#include "adai_checks.h"
#include "entry.h"
#include "prefetch.h"

namespace fused_optim::cpu {
namespace {

// The grad as the update sees it: divided by GradScaler's scale over the clip coefficient
// (grad_divisor) only when that is not 1. g / 1 is g exactly, so leaving the division out (a
// vector divide per element) changes no bit.
template <bool SCALED, class T>
FO_INLINE T unscaled(T g, T grad_divisor) {
  return SCALED ? g / grad_divisor : g;
}

// COUPLED_L2 is a template flag so the decoupled/no-decay loop never loads p (with L2, MODE
// says where p's value is: the param, its master or param + remainder, param_access.h).
template <bool COUPLED_L2, bool SCALED, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES double adai_grad_sq_chunk(const P* __restrict p, const P* __restrict g, int64_t n,
                                        const math::AdaiHyper<T> hyper, const T grad_divisor,
                                        const ParamExtra x) {
  const auto h = fixed_weight_decay<COUPLED_L2 ? kL2Decay : kNoDecay>(hyper);
  return lane_sum(n, [&](int64_t i) {
    const T pi = COUPLED_L2 ? load_param<MODE>(p, x, i) : T(0);
    return math::adai_grad_sq_element(pi, unscaled<SCALED>(T(load_value(g[i])), grad_divisor), h);
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
// microcode, which makes the whole step several times slower (bench/NOTES.md). The rest of
// the arithmetic is IEEE, subnormals included, as in torch.
template <class T>
FO_INLINE T normal_or_zero(T x) {
  return std::fabs(x) < std::numeric_limits<T>::min() ? T(0) : x;
}

template <int DECAY, bool SCALED, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void adai_update_chunk(P* __restrict p, const P* __restrict g, T* __restrict m,
                                     T* __restrict v, T* __restrict beta1_prod, int64_t n,
                                     const math::AdaiHyper<T> hyper, const T bc2, const T vbar,
                                     const T grad_divisor, const ParamExtra x) {
  const auto h = fixed_weight_decay<DECAY>(hyper);
  prefetched_blocks(
      n,
      [&](int64_t ahead) FO_LAMBDA_INLINE {
        prefetch_param<MODE>(p, x, ahead);
        prefetch_block<false>(g + ahead);
        prefetch_block<true>(m + ahead);
        prefetch_block<true>(v + ahead);
        prefetch_block<true>(beta1_prod + ahead);
      },
      [&](int64_t begin, int64_t end) FO_LAMBDA_INLINE {
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) {
          T pi = load_param<MODE>(p, x, i), mi = m[i], vi = v[i], bpi = beta1_prod[i];
          math::adai_update_element(pi, unscaled<SCALED>(T(load_value(g[i])), grad_divisor), mi, vi, bpi, h, bc2,
                                    vbar);
          store_param<MODE>(p, x, i, pi);
          m[i] = mi;
          v[i] = vi;
          beta1_prod[i] = normal_or_zero(bpi);
        }
      });
}

// Pass 1. lists: param, grad[, masters/remainders]. call.v_sums: each tensor's sum of
// exp_avg_sq before this step (from the previous update pass, or tensor_sums). Returns the
// group's sum of vhat.
std::vector<double> adai_second_moment(const Call& call, const math::AdaiSecondMomentArgs& a) {
  const DType pd = parse_dtype(call.where, call.dtype);
  parse_state_dtype(call.where, pd, call.state_dtype, false);
  const ParamStorage storage = check_adai_pass1(call, pd);
  const size_t ntensors = call.numels.size();

  return dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    // pass 1 needs only the L2 term; lr, beta0 and eps enter in pass 2
    const auto h = math::adai_hyper<T>(0.0, 0.0, a.beta2, 0.0, a.weight_decay, a.decoupled);
    const bool coupled_l2 = !a.decoupled && a.weight_decay != 0.0;
    const ChunkPlan plan = plan_chunks(call.numels);
    // one partial per chunk, combined in fixed trees: independent of the thread count
    std::vector<double> partials(size_t(plan.total()));
    const T divisor = T(call.grad_divisor);
    dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
      with_constant<2>(int(divisor != T(1)), [&](auto scaled) {
        constexpr int MODE = decltype(mode)::value;
        constexpr bool SCALED = decltype(scaled)::value;
        for_each_call_chunk(call, plan, storage, [&](const Chunk& c, int64_t k) {
          const P* p = c.role<const P>(0);
          const P* g = c.role<const P>(1);
          partials[size_t(k)] =
              coupled_l2 ? adai_grad_sq_chunk<true, SCALED, MODE, P>(p, g, c.size, h, divisor, c.extra)
                         : adai_grad_sq_chunk<false, SCALED, MODE, P>(p, g, c.size, h, divisor, c.extra);
        });
      });
    });
    const std::vector<double> grad_sq = per_tensor_sums(plan, partials);
    std::vector<double> terms(ntensors);
    for (size_t t = 0; t < ntensors; ++t)
      terms[t] = math::adai_vhat_sum(call.v_sums[t], grad_sq[t], a.beta2,
                                     math::adai_bias_correction2(a.beta2, step_count(call, t)));
    return std::vector<double>{tree_sum(terms.data(), int64_t(terms.size()))};
  });
}

// Pass 2. lists: param, grad, exp_avg, exp_avg_sq, beta1_prod[, masters/remainders]. Returns
// each tensor's sum of the new exp_avg_sq, the v_sums of the next step, and stores them at
// call.v_sum_addresses too when that is not empty (one float64 per tensor: the optimizer's
// carried sums).
std::vector<double> adai_update(const Call& call, const math::AdaiUpdateArgs& a) {
  const DType pd = parse_dtype(call.where, call.dtype);
  const DType sd = parse_state_dtype(call.where, pd, call.state_dtype, false);
  std::vector<DType> roles{pd, pd, sd, sd, sd};
  const ParamStorage storage = check_call(call, roles, Steps::kPerTensor);
  if (!call.v_sum_addresses.empty()) {
    check_per_tensor(call.where, "v_sum_addresses", call.v_sum_addresses.size(), call.numels.size());
    check_lists(call.where, {call.v_sum_addresses}, {DType::kFloat64}, std::vector<int64_t>(call.numels.size(), 1));
  }

  return dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    const auto h = math::adai_hyper<T>(a.lr, a.beta0, a.beta2, a.eps, a.weight_decay, a.decoupled);
    std::vector<double> bc2(call.numels.size());
    for (size_t t = 0; t < bc2.size(); ++t) bc2[t] = math::adai_bias_correction2(a.beta2, step_count(call, t));
    const ChunkPlan plan = plan_chunks(call.numels);
    std::vector<double> partials(size_t(plan.total()));
    const T divisor = T(call.grad_divisor);
    with_constant<kWeightDecayModes>(weight_decay_mode(h), [&](auto decay) {
      with_constant<2>(int(divisor != T(1)), [&](auto scaled) {
        dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
          for_each_call_chunk(call, plan, storage, [&](const Chunk& c, int64_t k) {
            T* v = c.role<T>(3);
            adai_update_chunk<decltype(decay)::value, decltype(scaled)::value, decltype(mode)::value, P>(
                c.role<P>(0), c.role<const P>(1), c.role<T>(2), v, c.role<T>(4), c.size, h,
                T(bc2[size_t(c.tensor)]), T(call.vbar), divisor, c.extra);
            // the new v of the chunk is still in cache (256 KB): summing it costs no memory
            // traffic, and a separate loop keeps both loops simple enough to vectorize
            partials[size_t(k)] = sum_chunk(v, c.size);
          });
        });
      });
    });
    std::vector<double> sums = per_tensor_sums(plan, partials);
    for (size_t t = 0; t < call.v_sum_addresses.size(); ++t) *address<double>(call.v_sum_addresses[t], 0) = sums[t];
    return sums;
  });
}

const Registration<math::AdaiSecondMomentArgs> registered_pass1("adai_second_moment", adai_second_moment);
const Registration<math::AdaiUpdateArgs> registered_update("adai_update", adai_update);

}  // namespace

std::vector<double> tensor_sums(const AddressLists& lists, const std::vector<int64_t>& numels,
                                int dtype, int num_threads) {
  const std::string where = "fused_optim._cpu.tensor_sums";
  const DType sd = parse_dtype(where, dtype);
  if (sd != DType::kFloat32 && sd != DType::kFloat64) fail(where, "states are float32 or float64");
  check_lists(where, lists, {sd}, numels);
  check_threads(where, num_threads);
  const ChunkPlan plan = plan_chunks(numels);
  std::vector<double> partials(size_t(plan.total()));
  for_each_chunk(plan, numels, dtype_size(sd), num_threads, [&](ChunkSpan s, int64_t c) {
    const auto t = s.tensor;
    partials[size_t(c)] = sd == DType::kFloat32
                              ? sum_chunk(address<const float>(lists[0][t], s.begin), s.size)
                              : sum_chunk(address<const double>(lists[0][t], s.begin), s.size);
  });
  return per_tensor_sums(plan, partials);
}

}  // namespace fused_optim::cpu
