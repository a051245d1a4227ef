// Compiled (not run) by tests/test_device_headers.py: the per-element math, the chunk map and
// the dtype conversions must stay usable from CUDA device code, since the CUDA kernels include
// the same headers as the CPU loops (one definition of each formula).
#include "fused_optim/math/adam.h"
#include "fused_optim/math/adai.h"
#include "fused_optim/math/adamomentum.h"
#include "fused_optim/math/dualadam.h"
#include "fused_optim/math/lion.h"
#include "fused_optim/dtypes.h"
#include "fused_optim/chunking.h"
#include "fused_optim/reduction.h"
using namespace fused_optim;

struct Hypers {
  math::AdamHyper<float> adam;
  math::AdaiHyper<float> adai;
  math::MomentHyper<float> moment;
  math::DualAdamHyper<float> dualadam;
  math::LionHyper<float> lion;
  math::DualAdamStepArgs dualadam_args;  // an operation's hyperparameter struct (args.h) as a kernel argument
};

template <class P>
__global__ void k(P* p, const P* g, float* m, float* v, float* bp, int64_t n, const Hypers h,
                  const int64_t* prefix, const int64_t* numels) {
  const ChunkSpan s = locate_chunk(prefix, numels, 1, kChunkElems, blockIdx.x);
  for (int64_t i = s.begin + threadIdx.x; i < s.begin + s.size; i += blockDim.x) {
    float pi = load_value(p[i]), mi = m[i], vi = v[i], b = bp[i], vm = 0.f;
    const float gi = load_value(g[i]);
    math::adam_element<true>(pi, gi, mi, vi, vm, h.adam, 0.1f, 0.9f);
    math::adamomentum_element<false>(pi, gi, mi, vi, vm, h.moment, 0.1f, 0.9f, math::kRectified);
    math::dualadam_element(pi, gi, mi, vi, h.dualadam);
    math::adai_update_element(pi, gi, mi, vi, b, h.adai, 0.5f, 1.0f);
    math::lion_element(pi, gi, mi, h.lion);
    vi += math::adai_grad_sq_element(pi, gi, h.adai);
    vi += float(h.dualadam_args.switch_rate);
    store_value(p[i], pi); m[i] = mi; v[i] = vi; bp[i] = b;
  }
}
template __global__ void k<float>(float*, const float*, float*, float*, float*, int64_t, const Hypers, const int64_t*, const int64_t*);
template __global__ void k<bf16_bits>(bf16_bits*, const bf16_bits*, float*, float*, float*, int64_t, const Hypers, const int64_t*, const int64_t*);
template __global__ void k<fp16_bits>(fp16_bits*, const fp16_bits*, float*, float*, float*, int64_t, const Hypers, const int64_t*, const int64_t*);

// host side: the hyperparameter builders are host/device functions too
void build_hypers() {
  (void)math::adam_hyper<float>(1e-3, 0.9, 0.999, 1e-8, 0.0, true, false);
  (void)math::adai_hyper<float>(0.1, 0.1, 0.99, 1e-3, 0.0, false);
  (void)math::moment_hyper<float>(1e-3, 0.9, 0.999, 1e-16, 0.0, true);
  (void)math::dualadam_hyper<float>(1e-3, 0.9, 0.999, 1e-8, 0.0, 3.0, 0.97, true);
  (void)math::lion_hyper<float>(1e-4, 0.9, 0.99, 0.1);
}
