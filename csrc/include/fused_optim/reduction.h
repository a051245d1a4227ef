// Deterministic sums. The order of every addition is fixed by the data layout alone (chunk
// boundaries, lane index, tree shape), never by thread count or scheduling, so two runs on the
// same inputs give bitwise identical results. Accumulation is in fp64: the Adai mean sums up
// to billions of fp32 values, and fp64 keeps that sum exact to well below fp32 rounding.
#pragma once
#include <cstdint>

#include "fused_optim/platform.h"

namespace fused_optim {

// Within a chunk, element i adds into lane i % kReduceLanes; the lanes are independent
// accumulators, which is what lets the CPU loop vectorize without reassociating anything.
constexpr int kReduceLanes = 16;

// Fixed pairwise tree over the lanes: lane j += lane j + w for w = 8, 4, 2, 1.
FO_HOST_DEVICE FO_INLINE double combine_lanes(double* lanes) {
  for (int width = kReduceLanes / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  return lanes[0];
}

// One addition of the pairwise tree below: at level `width`, pair k adds values[2 k width +
// width] into values[2 k width]. The additions of one level are independent, so a CUDA block
// runs a level in parallel (one pair per thread, a barrier between levels) and produces the
// same bits as the sequential loop.
FO_HOST_DEVICE FO_INLINE void tree_sum_step(double* values, int64_t n, int64_t width, int64_t pair) {
  const int64_t i = pair * 2 * width;
  if (i + width < n) values[i] += values[i + width];
}

// Fixed pairwise tree over per-chunk partial sums (in place; destroys the input). Pairwise
// rather than left-to-right keeps the rounding error O(log n) for lists of many chunks.
FO_HOST_DEVICE FO_INLINE double tree_sum(double* values, int64_t n) {
  if (n == 0) return 0.0;
  for (int64_t width = 1; width < n; width *= 2)
    for (int64_t pair = 0; pair * 2 * width + width < n; ++pair) tree_sum_step(values, n, width, pair);
  return values[0];
}

}  // namespace fused_optim
