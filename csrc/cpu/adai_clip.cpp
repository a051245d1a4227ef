// Adai's pass 1 when max_grad_norm clips the grads (reference: adai_clip_sums): the clip
// coefficient needs the norm of ALL grads, the mean of vhat needs the clipped grads, and one
// read of g (and p for coupled L2) serves both: it returns the group's norm part and its sum
// of vhat as a quadratic in the coefficient (math/clip.h), which the optimizer evaluates once
// the norm is known. sum(v) is carried from the previous update pass, as in adai_second_moment.
// Bytes per element (fp32): read g = 4 (+4 reading p for coupled L2), against 8 for a norm pass
// followed by adai_second_moment; the update pass (adai_update, 36 B) then clips in registers.
// Each chunk is summed in several loops, one accumulator each (they vectorize; a chunk is
// 256 KB of fp32 and stays in cache after the first).
#include <cmath>

#include "fused_optim/math/adai.h"
#include "fused_optim/math/clip.h"

#include "adai_checks.h"
#include "entry.h"

namespace fused_optim::cpu {
namespace {

// {norm part, sum g^2, sum g p, sum p^2} of one chunk; g divided by grad_divisor in the math
// dtype as the update divides it, then widened (products of two fp32 values are exact in fp64).
template <bool COUPLED_L2, int NORM, int MODE, class P, class T = math_t<P>>
FO_CPU_CLONES void clip_chunk(const P* __restrict p, const P* __restrict g, int64_t n,
                              const T grad_divisor, const double q, const ParamExtra x, double* out) {
  auto gs = [&](int64_t i) { return double(T(load_value(g[i])) / grad_divisor); };
  out[1] = lane_sum(n, [&](int64_t i) { return gs(i) * gs(i); });
  if (NORM == math::kNormTwo) {
    out[0] = out[1];
  } else if (math::norm_is_extremum(NORM)) {
    double e = math::norm_identity(NORM);
    for (int64_t i = 0; i < n; ++i) e = math::norm_extremum<NORM>(e, std::fabs(gs(i)));
    out[0] = e;
  } else {
    out[0] = lane_sum(n, [&](int64_t i) { return math::norm_term<NORM>(gs(i), q); });
  }
  if (COUPLED_L2) {
    auto pd = [&](int64_t i) { return double(load_param<MODE>(p, x, i)); };
    out[2] = lane_sum(n, [&](int64_t i) { return gs(i) * pd(i); });
    out[3] = lane_sum(n, [&](int64_t i) { return pd(i) * pd(i); });
  } else {
    out[2] = out[3] = 0.0;
  }
}

// Pass 1 when max_grad_norm clips the grads. lists: param, grad[, masters/remainders];
// call.v_sums as for adai_second_moment. Returns {norm part, c0, c1, c2}: the group's part of
// the grad norm of order norm_type and its sum of vhat as c0 + c1 c + c2 c^2 in the clip
// coefficient c (math/clip.h).
std::vector<double> adai_clip_sums(const Call& call, const math::AdaiClipSumsArgs& a) {
  const DType pd = parse_dtype(call.where, call.dtype);
  parse_state_dtype(call.where, pd, call.state_dtype, false);
  const ParamStorage storage = check_adai_pass1(call, pd);
  const size_t ntensors = call.numels.size();
  const double beta2 = a.beta2, norm_type = a.norm_type.q;

  const int kind = math::norm_kind(norm_type);
  const bool coupled_l2 = !a.decoupled && a.weight_decay != 0.0;
  const double l2 = coupled_l2 ? a.weight_decay : 0.0;
  std::vector<double> bc2(ntensors);
  for (size_t t = 0; t < ntensors; ++t) bc2[t] = math::adai_bias_correction2(beta2, step_count(call, t));
  const ChunkPlan plan = plan_chunks(call.numels);
  const size_t nchunks = size_t(plan.total());
  // per chunk, in chunk order (independent of the thread count): its norm part and its
  // tensor's weighted terms; c0 also holds each tensor's sum(v) term, once, after the chunks
  std::vector<double> norm_parts(nchunks), c0(nchunks + ntensors), c1(nchunks), c2(nchunks);
  for (size_t t = 0; t < ntensors; ++t)
    c0[nchunks + t] = math::adai_clip_terms(call.v_sums[t], 0.0, 0.0, 0.0, beta2, l2, bc2[t]).c0;
  dispatch_param_dtype(pd, [&](auto tag) {
    using P = decltype(tag);
    using T = math_t<P>;
    with_constant<math::kNormKinds>(kind, [&](auto norm) {
      dispatch_storage_mode<P>(call.storage_mode, [&](auto mode) {
        constexpr int NORM = decltype(norm)::value, MODE = decltype(mode)::value;
        for_each_call_chunk(call, plan, storage, [&](const Chunk& c, int64_t k) {
          const P* p = c.role<const P>(0);
          const P* g = c.role<const P>(1);
          const T divisor = T(call.grad_divisor);
          double sums[4];
          if (coupled_l2) clip_chunk<true, NORM, MODE, P>(p, g, c.size, divisor, norm_type, c.extra, sums);
          else clip_chunk<false, NORM, MODE, P>(p, g, c.size, divisor, norm_type, c.extra, sums);
          const auto terms = math::adai_clip_terms(0.0, sums[1], sums[2], sums[3], beta2, l2, bc2[size_t(c.tensor)]);
          norm_parts[size_t(k)] = sums[0];
          c0[size_t(k)] = terms.c0;
          c1[size_t(k)] = terms.c1;
          c2[size_t(k)] = terms.c2;
        });
      });
    });
  });
  double norm_part = math::norm_identity(kind);
  if (kind == math::kNormMax) {
    for (double x : norm_parts) norm_part = math::norm_extremum<math::kNormMax>(norm_part, x);
  } else if (kind == math::kNormMin) {
    for (double x : norm_parts) norm_part = math::norm_extremum<math::kNormMin>(norm_part, x);
  } else {
    norm_part = tree_sum(norm_parts.data(), int64_t(nchunks));
  }
  return {norm_part, tree_sum(c0.data(), int64_t(c0.size())), tree_sum(c1.data(), int64_t(nchunks)),
          tree_sum(c2.data(), int64_t(nchunks))};
}

const Registration<math::AdaiClipSumsArgs> registered("adai_clip_sums", adai_clip_sums);

}  // namespace
}  // namespace fused_optim::cpu
