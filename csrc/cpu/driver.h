// What every CPU entry point shares: the chunk plan over a tensor list, the OpenMP loop over
// chunks, and the dispatch on the parameter dtype (the argument checks are both modules':
// fused_optim/checks.h). Knows no optimizer.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fused_optim/call.h"
#include "fused_optim/checks.h"
#include "fused_optim/chunking.h"
#include "fused_optim/dtypes.h"
#include "fused_optim/reduction.h"

namespace fused_optim::cpu {

// Chunk prefix of a list (see chunking.h) for chunks of `unit` elements. Zero-size tensors own
// no chunk.
struct ChunkPlan {
  std::vector<int64_t> prefix;
  int64_t unit = kChunkElems;
  int64_t total() const { return prefix.back(); }
};
ChunkPlan plan_chunks(const std::vector<int64_t>& numels, int64_t unit = kChunkElems);

// The plan of a call whose elements are independent of each other (no sums): the chunks of
// chunking.h, or where the list has fewer of them than `threads` (a single tensor of 64K-256K
// elements), halved down to kMinElementwiseUnit elements until every thread gets one. The
// elements each thread computes do not depend on the cut, so neither do the results; calls
// that sum keep the fixed chunks, whose partial sums combine in a fixed tree.
constexpr int64_t kMinElementwiseUnit = 4096;
ChunkPlan plan_elementwise(const std::vector<int64_t>& numels, int threads);

// The flush-to-zero and denormals-are-zero bits of the calling thread's floating-point
// control (x86 MXCSR, set e.g. by torch.set_flush_denormal; 0 elsewhere, where there is no
// such mode).
unsigned denormal_mode();

// Gives the current thread the denormal mode `mode` (denormal_mode() of the caller) while it
// lives, then restores the thread's own. MXCSR is per thread and OpenMP workers do not inherit
// the caller's: without this, a caller that flushes denormals would flush only in the chunks
// it runs itself, and results would depend on the thread count.
class FollowDenormalMode {
 public:
  explicit FollowDenormalMode(unsigned mode);
  ~FollowDenormalMode();
  FollowDenormalMode(const FollowDenormalMode&) = delete;
  FollowDenormalMode& operator=(const FollowDenormalMode&) = delete;

 private:
  unsigned saved_ = 0;
  bool changed_ = false;
};

// The thread policy. A parallel region costs the wake-up of its team, and on a machine whose
// cores other processes keep busy, the wait for each descheduled worker: a scheduler time
// slice, milliseconds, more than a small step's whole work. So a call runs on one thread per
// bytes_per_thread() bytes of its tensors (elements times the element sizes of its roles), at
// least 1 and at most num_threads, and which bytes_per_thread applies depends on the machine:
// - quiet: from where a second thread pays on an idle machine (bench/thread_crossover.py and
//   bench/NOTES.md: from 512 KiB of fp32 AdamW, 32K elements, once a single tensor's elements
//   can be split, plan_elementwise);
// - busy: the caller of a recent region, out of chunks (they are handed out dynamically),
//   waited over kLateWorkerNs for a worker (one that started late or lost its core mid-chunk:
//   on a quiet machine the wait is at most one chunk's work, tens of microseconds), so for
//   kBusyForNs every call takes the busy value, where a second thread stops losing on a loaded
//   machine; then a region probes again (one without such a wait marks the machine quiet at
//   once). Under load that costs one wait per kBusyForNs instead of one per call.
// Results do not depend on any of it: the chunks and the trees their sums combine in are the
// same on any thread count.
constexpr int64_t kQuietBytesPerThread = int64_t(512) << 10;
constexpr int64_t kBusyBytesPerThread = int64_t(32) << 20;
constexpr int64_t kLateWorkerNs = 1000000;
constexpr int64_t kBusyForNs = 2000000000;
int threads_for(int64_t bytes, int num_threads, int64_t bytes_per_thread);
// The bytes a call over tensors of these element counts moves, bytes_per_element per element.
int64_t list_bytes(const std::vector<int64_t>& numels, int64_t bytes_per_element);

// The bytes_per_thread calls use now (the busy one while the machine is marked busy), the two
// settings (>= 1; tests and bench/thread_crossover.py set both to 1 to run every size on the
// threads they ask for), and the contention record.
int64_t bytes_per_thread();
void set_bytes_per_thread(int64_t quiet, int64_t busy);
int64_t quiet_bytes_per_thread();
int64_t busy_bytes_per_thread();
bool machine_busy();
void note_worker_wait(int64_t wait_ns);  // busy when wait_ns > kLateWorkerNs, else quiet
int64_t monotonic_ns();

// Runs body(ChunkSpan, chunk_index) for every chunk of the list, on the threads threads_for
// gives the list's bytes (bytes_per_element: the sum of the element sizes of the call's roles)
// and at most one per chunk. Chunks are handed out dynamically: on a list of tensors of very
// different sizes (a ResNet's), a static split gives one thread most of the bytes.
template <class Body>
void for_each_chunk(const ChunkPlan& plan, const std::vector<int64_t>& numels, int64_t bytes_per_element,
                    int num_threads, Body&& body) {
  const int64_t nchunks = plan.total();
  const int64_t ntensors = int64_t(numels.size());
  const int wanted = threads_for(list_bytes(numels, bytes_per_element), num_threads, bytes_per_thread());
  const int threads = int(std::min<int64_t>(wanted, std::max<int64_t>(nchunks, 1)));
  const unsigned mode = denormal_mode();
  int64_t caller_done = 0;  // when the calling thread ran out of chunks
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const FollowDenormalMode follow(mode);  // every thread computes as the caller does
#pragma omp for schedule(dynamic) nowait
    for (int64_t c = 0; c < nchunks; ++c) {
      body(locate_chunk(plan.prefix.data(), numels.data(), ntensors, plan.unit, c), c);
    }
    if (threads > 1 && omp_get_thread_num() == 0) caller_done = monotonic_ns();
  }
  // the wait at the region's end: a worker that started late, or lost its core mid-chunk
  if (threads > 1) note_worker_wait(monotonic_ns() - caller_done);
}

// The sum of the element sizes of the call's roles: params and grads in the param dtype,
// states in the state dtype, masters (4) or remainders (2) of the storage modes that keep them;
// a role the call leaves out (an empty list) counts nothing. The call is checked already.
int64_t call_bytes_per_element(const Call& call);

// Sum of term(i) over [0, n): element i adds into lane i % kReduceLanes, lanes combine in the
// fixed tree of reduction.h. term may also write memory (the Adai update pass does).
template <class Term>
FO_INLINE double lane_sum(int64_t n, Term&& term) {
  double lanes[kReduceLanes] = {};
  int64_t i = 0;
  for (; i + kReduceLanes <= n; i += kReduceLanes) {
#pragma omp simd
    for (int j = 0; j < kReduceLanes; ++j) lanes[j] += double(term(i + j));
  }
  for (int j = 0; i + j < n; ++j) lanes[j] += double(term(i + j));
  return combine_lanes(lanes);
}

// Per-tensor sums from per-chunk partial sums: tensor t's chunks, in their fixed tree.
// Destroys the partials.
std::vector<double> per_tensor_sums(const ChunkPlan& plan, std::vector<double>& partials);

template <class T>
T* address(uintptr_t a, int64_t offset) {
  return reinterpret_cast<T*>(a) + offset;
}

// Calls f(P{}) with P the C++ storage type of the parameter dtype.
template <class F>
decltype(auto) dispatch_param_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kBFloat16: return f(bf16_bits{});
    case DType::kFloat16: return f(fp16_bits{});
  }
  throw std::invalid_argument("unknown dtype");
}

// Calls f(std::integral_constant<int, v>{}) for a runtime v in [0, N), so that a loop sees its
// mode as a compile-time constant: GCC leaves a loop scalar when it branches on invariant
// flags next to 16-bit loads/stores or fp64 lane sums, and a constant removes the branch.
template <int N, class F>
decltype(auto) with_constant(int v, F&& f) {
  if constexpr (N == 1) {
    return f(std::integral_constant<int, 0>{});
  } else {
    if (v == N - 1) return f(std::integral_constant<int, N - 1>{});
    return with_constant<N - 1>(v, std::forward<F>(f));
  }
}

// Weight-decay modes of the hyper structs' apply_decay / apply_l2 flags (math/moments.h).
enum WeightDecayMode : int { kNoDecay = 0, kDecoupledDecay = 1, kL2Decay = 2, kWeightDecayModes = 3 };

template <class Hyper>
int weight_decay_mode(const Hyper& h) {
  return h.apply_decay ? kDecoupledDecay : h.apply_l2 ? kL2Decay : kNoDecay;
}

// A copy of h whose flags are the compile-time MODE (used inside the chunk functions).
template <int MODE, class Hyper>
FO_INLINE Hyper fixed_weight_decay(Hyper h) {
  h.apply_decay = MODE == kDecoupledDecay;
  h.apply_l2 = MODE == kL2Decay;
  return h;
}

// Adds 1 to each float32 step counter (0-dim CPU tensors) at the given addresses.
void advance_counters(const std::vector<uintptr_t>& addresses);

// Deterministic fp64 sum of each tensor of a list (float32 or float64 states).
std::vector<double> tensor_sums(const AddressLists& lists, const std::vector<int64_t>& numels, int dtype,
                                int num_threads);

}  // namespace fused_optim::cpu
