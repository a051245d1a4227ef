#include "driver.h"
#include "entry.h"
#include "param_access.h"

#include <algorithm>
#include <atomic>
#include <chrono>
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

namespace {
std::atomic<int64_t> g_quiet_bytes_per_thread{kQuietBytesPerThread};
std::atomic<int64_t> g_busy_bytes_per_thread{kBusyBytesPerThread};
std::atomic<int64_t> g_busy_until_ns{0};
}  // namespace

int threads_for(int64_t bytes, int num_threads, int64_t bytes_per_thread) {
  if (bytes_per_thread < 1) fail("fused_optim._cpu.threads_for", "bytes_per_thread must be >= 1");
  const int64_t wanted = std::max<int64_t>(1, bytes / bytes_per_thread);
  return int(std::min<int64_t>(std::max(num_threads, 1), wanted));
}

int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool machine_busy() { return monotonic_ns() < g_busy_until_ns.load(std::memory_order_relaxed); }

void note_worker_wait(int64_t wait_ns) {
  g_busy_until_ns.store(wait_ns > kLateWorkerNs ? monotonic_ns() + kBusyForNs : 0, std::memory_order_relaxed);
}

int64_t quiet_bytes_per_thread() { return g_quiet_bytes_per_thread.load(std::memory_order_relaxed); }
int64_t busy_bytes_per_thread() { return g_busy_bytes_per_thread.load(std::memory_order_relaxed); }

int64_t bytes_per_thread() { return machine_busy() ? busy_bytes_per_thread() : quiet_bytes_per_thread(); }

void set_bytes_per_thread(int64_t quiet, int64_t busy) {
  if (quiet < 1 || busy < 1) fail("fused_optim._cpu.set_bytes_per_thread", "bytes_per_thread must be >= 1");
  g_quiet_bytes_per_thread.store(quiet, std::memory_order_relaxed);
  g_busy_bytes_per_thread.store(busy, std::memory_order_relaxed);
}

int64_t call_bytes_per_element(const Call& call) {
  const DType param = DType(call.dtype);
  const DType math_dtype = param == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  const int64_t state = dtype_size(call.state_dtype == -1 ? math_dtype : DType(call.state_dtype));
  const bool keeps_extra = call.storage_mode == math::kMasterStorage || call.storage_mode == math::kRemainderStorage;
  const int64_t extra = call.storage_mode == math::kMasterStorage ? 4 : 2;
  int64_t bytes = 0;
  for (size_t k = 0; k < call.lists.size(); ++k) {
    if (call.lists[k].empty()) continue;
    const bool last = k + 1 == call.lists.size();
    bytes += k < 2 ? dtype_size(param) : keeps_extra && last ? extra : state;
  }
  return bytes;
}

void advance_counters(const std::vector<uintptr_t>& addresses) {
  for (uintptr_t a : addresses) {
    if (a == 0 || a % alignof(float) != 0)
      fail("fused_optim._cpu.advance_counters", "a step counter address is null or misaligned");
  }
  for (uintptr_t a : addresses) *reinterpret_cast<float*>(a) += 1.0f;
}

int64_t list_bytes(const std::vector<int64_t>& numels, int64_t bytes_per_element) {
  int64_t elements = 0;
  for (int64_t n : numels) elements += n;
  return elements * bytes_per_element;
}

ChunkPlan plan_chunks(const std::vector<int64_t>& numels, int64_t unit) {
  ChunkPlan plan;
  plan.unit = unit;
  plan.prefix.resize(numels.size() + 1);
  plan.prefix[0] = 0;
  for (size_t t = 0; t < numels.size(); ++t) plan.prefix[t + 1] = plan.prefix[t] + chunks_in(numels[t], unit);
  return plan;
}

ChunkPlan plan_elementwise(const std::vector<int64_t>& numels, int threads) {
  ChunkPlan plan = plan_chunks(numels);
  while (plan.total() < threads && plan.unit / 2 >= kMinElementwiseUnit) plan = plan_chunks(numels, plan.unit / 2);
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

