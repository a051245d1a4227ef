#include "driver.h"
#include "entry.h"
#include "param_access.h"

#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FO_HAVE_MXCSR 1
#endif

namespace fused_optim::cpu {

namespace {
constexpr unsigned kDenormalBits = 0x8040u;  // FTZ (bit 15) | DAZ (bit 6)
}  // namespace

unsigned denormal_mode() {
#ifdef FO_HAVE_MXCSR
  return _mm_getcsr() & kDenormalBits;
#else
  return 0;
#endif
}

FollowDenormalMode::FollowDenormalMode(unsigned mode) {
#ifdef FO_HAVE_MXCSR
  saved_ = _mm_getcsr();
  const unsigned wanted = (saved_ & ~kDenormalBits) | mode;
  changed_ = wanted != saved_;
  if (changed_) _mm_setcsr(wanted);
#else
  (void)mode;
#endif
}

FollowDenormalMode::~FollowDenormalMode() {
#ifdef FO_HAVE_MXCSR
  if (changed_) _mm_setcsr(saved_);
#endif
}

void advance_counters(const std::vector<uintptr_t>& addresses) {
  for (uintptr_t a : addresses) {
    if (a == 0 || a % alignof(float) != 0)
      fail("fused_optim._cpu.advance_counters", "a step counter address is null or misaligned");
  }
  for (uintptr_t a : addresses) *reinterpret_cast<float*>(a) += 1.0f;
}

ChunkPlan plan_chunks(const std::vector<int64_t>& numels) {
  ChunkPlan plan;
  plan.prefix.resize(numels.size() + 1);
  plan.prefix[0] = 0;
  for (size_t t = 0; t < numels.size(); ++t)
    plan.prefix[t + 1] = plan.prefix[t] + chunks_in(numels[t], kChunkElems);
  return plan;
}

std::vector<double> per_tensor_sums(const ChunkPlan& plan, std::vector<double>& partials) {
  const size_t ntensors = plan.prefix.size() - 1;
  std::vector<double> sums(ntensors);
  for (size_t t = 0; t < ntensors; ++t)
    sums[t] = tree_sum(partials.data() + plan.prefix[t], plan.prefix[t + 1] - plan.prefix[t]);
  return sums;
}

ParamStorage param_storage(const Call& call, DType param, std::vector<DType>& roles) {
  check_storage(call, param, roles);
  ParamStorage storage;
  storage.mode = call.storage_mode;
  if (storage.mode == math::kStochasticStorage) {
    storage.keys.resize(call.numels.size());
    for (size_t t = 0; t < call.numels.size(); ++t)
      storage.keys[t] =
          math::stochastic_key(call.seed, call.tensor_indices[t], uint32_t(uint64_t(step_count(call, t))));
  }
  if (storage.mode == math::kMasterStorage || storage.mode == math::kRemainderStorage)
    storage.extra = &call.lists.back();
  return storage;
}

}  // namespace fused_optim::cpu

