#include "prefetch.h"

#include <atomic>
#include <string>

#include "fused_optim/call.h"

namespace fused_optim::cpu {
namespace {
std::atomic<int64_t> g_prefetch_distance{kDefaultPrefetchDistance};
}  // namespace

int64_t prefetch_distance() { return g_prefetch_distance.load(std::memory_order_relaxed); }

void set_prefetch_distance(int64_t elements) {
  if (elements < 0 || elements > kMaxPrefetchDistance || elements % kPrefetchBlock != 0)
    fail("fused_optim._cpu.set_prefetch_distance",
         "the distance is a multiple of " + std::to_string(kPrefetchBlock) + " elements in [0, " +
             std::to_string(kMaxPrefetchDistance) + "] (0: no prefetches); got " + std::to_string(elements));
  g_prefetch_distance.store(elements, std::memory_order_relaxed);
}

}  // namespace fused_optim::cpu
