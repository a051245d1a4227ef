// Software prefetch for the streaming element loops. A one-pass update reads four to six
// streams and writes most of them back, with tens of vector operations per element in between
// (divisions and square roots): the core's out-of-order window then holds few of the loads
// the hardware prefetchers issue for it, and a loop over tensors larger than the caches runs
// below the memory's rate (an fp32 Adam loop at 85-90% of a loop that only moves its bytes).
// Asking for each stream's lines a fixed distance ahead, block by block, brings it to within a
// few percent of that (bench/NOTES.md). Prefetches change no result.
#pragma once
#include <cstdint>

#include "fused_optim/platform.h"

// On the lambdas a loop hands prefetched_blocks: inlined into the ISA clone (FO_CPU_CLONES)
// that calls it. A lambda left out of line would be compiled for the baseline ISA, and its
// loop would not vectorize for the clone's.
#define FO_LAMBDA_INLINE __attribute__((always_inline))

namespace fused_optim::cpu {

// Elements per block (one prefetch per cache line of each stream per block), and the default
// distance ahead, in elements: 2 KB of an fp32 stream, a few hundred nanoseconds of the loop,
// about one memory latency.
constexpr int64_t kPrefetchBlock = 64;
constexpr int64_t kDefaultPrefetchDistance = 512;
constexpr int64_t kMaxPrefetchDistance = 1 << 16;
constexpr int64_t kCacheLine = 64;

// The distance the loops prefetch ahead, in elements (0: no prefetches), and its setter: a
// multiple of kPrefetchBlock in [0, kMaxPrefetchDistance] (fails otherwise). Set for the
// process; results do not depend on it, which is what the tests check with it, and the
// benchmarks compare distances with it.
int64_t prefetch_distance();
void set_prefetch_distance(int64_t elements);

// Prefetches the kPrefetchBlock elements from x on: for writing (WRITE: the line arrives
// owned, so the store that follows needs no second request) or for reading.
template <bool WRITE, class X>
FO_INLINE void prefetch_block(const X* x) {
  const char* bytes = reinterpret_cast<const char*>(x);
  for (int64_t offset = 0; offset < kPrefetchBlock * int64_t(sizeof(X)); offset += kCacheLine)
    __builtin_prefetch(bytes + offset, WRITE ? 1 : 0, 3);
}

// Runs elements(begin, end) over [0, n) in blocks, calling prefetch(i) with the first element
// of the block prefetch_distance() elements ahead before each block. What is left at the end
// (the elements already asked for) runs as one range; a range shorter than the distance, or
// any range with prefetches off, as one range without prefetches.
template <class Prefetch, class Elements>
FO_INLINE void prefetched_blocks(int64_t n, Prefetch&& prefetch, Elements&& elements) {
  const int64_t ahead = prefetch_distance();
  int64_t i = 0;
  if (ahead > 0) {
    for (; i + ahead + kPrefetchBlock <= n; i += kPrefetchBlock) {
      prefetch(i + ahead);
      elements(i, i + kPrefetchBlock);
    }
  }
  elements(i, n);
}

}  // namespace fused_optim::cpu
