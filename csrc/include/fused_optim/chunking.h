// The block -> (tensor, offset) map of a multi-tensor launch. Every tensor of a list is cut
// into chunks of a fixed element count; chunk c of the whole list belongs to the tensor whose
// prefix range contains it. The CPU loops iterate over these chunks with OpenMP and the CUDA
// kernels map one block to one chunk, so both backends share this code (and the CPU tests
// exercise what the GPU will do).
#pragma once
#include <cstdint>

#include "fused_optim/platform.h"

namespace fused_optim {

// Elements per chunk: large enough that a chunk amortizes its bookkeeping, small enough
// that a list of a few large tensors still splits into many independent pieces of work.
constexpr int64_t kChunkElems = 1 << 16;

FO_HOST_DEVICE FO_INLINE int64_t chunks_in(int64_t numel, int64_t chunk_elems) {
  return (numel + chunk_elems - 1) / chunk_elems;
}

// chunk_prefix has ntensors + 1 entries: chunk_prefix[t] is the first global chunk of tensor
// t and chunk_prefix[ntensors] the total. Returns the tensor that owns global chunk c
// (zero-size tensors own no chunk and are never returned).
FO_HOST_DEVICE FO_INLINE int64_t owner_of_chunk(const int64_t* chunk_prefix, int64_t ntensors,
                                                int64_t c) {
  int64_t lo = 0, hi = ntensors;  // invariant: chunk_prefix[lo] <= c < chunk_prefix[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (chunk_prefix[mid] <= c) lo = mid; else hi = mid;
  }
  return lo;
}

struct ChunkSpan {
  int64_t tensor;  // index in the list
  int64_t begin;   // first element of the chunk in that tensor (64-bit: tensors may pass 2^31)
  int64_t size;    // elements in this chunk
};

FO_HOST_DEVICE FO_INLINE ChunkSpan locate_chunk(const int64_t* chunk_prefix, const int64_t* numels,
                                                int64_t ntensors, int64_t chunk_elems, int64_t c) {
  const int64_t t = owner_of_chunk(chunk_prefix, ntensors, c);
  const int64_t begin = (c - chunk_prefix[t]) * chunk_elems;
  const int64_t rest = numels[t] - begin;
  return ChunkSpan{t, begin, rest < chunk_elems ? rest : chunk_elems};
}

// Whether a role's data from element `begin` on can be read in packs of `pack` elements with
// single vector instructions: its address must be a multiple of the pack's size in bytes.
// A chunk takes the vector path only when every role passes; otherwise the masked scalar path.
FO_HOST_DEVICE FO_INLINE bool aligned_for_pack(uintptr_t address, int64_t begin, int64_t elem_size,
                                               int64_t pack) {
  return (address + uintptr_t(begin * elem_size)) % uintptr_t(pack * elem_size) == 0;
}

}  // namespace fused_optim
