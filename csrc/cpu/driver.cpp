#include "driver.h"

#include <string>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define FO_HAVE_MXCSR 1
#endif

namespace fused_optim::cpu {

namespace {
[[noreturn]] void fail(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("fused_optim._cpu.") + op + ": " + msg);
}
}  // namespace

DType parse_dtype(const char* op, int code) {
  if (code < 0 || code > 3) fail(op, "unknown dtype code " + std::to_string(code));
  return DType(code);
}

void check_per_tensor(const char* op, const char* what, size_t got, size_t ntensors) {
  if (got != ntensors)
    fail(op, std::string(what) + " has " + std::to_string(got) + " entries for " +
                 std::to_string(ntensors) + " tensors");
}

void check_threads(const char* op, int num_threads) {
  if (num_threads < 1) fail(op, "num_threads must be >= 1, got " + std::to_string(num_threads));
}

void check_lists(const char* op, const AddressLists& lists, const std::vector<DType>& role_dtypes,
                 const std::vector<int64_t>& numels) {
  if (lists.size() != role_dtypes.size())
    fail(op, "expected " + std::to_string(role_dtypes.size()) + " tensor lists, got " +
                 std::to_string(lists.size()));
  for (size_t k = 0; k < lists.size(); ++k) {
    check_per_tensor(op, "a tensor list", lists[k].size(), numels.size());
    const auto size = uintptr_t(dtype_size(role_dtypes[k]));
    for (size_t t = 0; t < numels.size(); ++t) {
      if (numels[t] < 0) fail(op, "negative numel at tensor " + std::to_string(t));
      if (numels[t] == 0) continue;
      if (lists[k][t] == 0)
        fail(op, "null address in list " + std::to_string(k) + " at tensor " + std::to_string(t));
      if (lists[k][t] % size != 0)
        fail(op, "address in list " + std::to_string(k) + " at tensor " + std::to_string(t) +
                     " is not aligned to its " + dtype_name(role_dtypes[k]) + " elements");
    }
  }
}

DenormalFlush::DenormalFlush(bool enable) : enabled_(enable) {
#ifdef FO_HAVE_MXCSR
  if (enabled_) {
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
  }
#endif
}

DenormalFlush::~DenormalFlush() {
#ifdef FO_HAVE_MXCSR
  if (enabled_) _mm_setcsr(saved_);
#endif
}

void advance_counters(const std::vector<uintptr_t>& addresses) {
  for (uintptr_t a : addresses) {
    if (a == 0 || a % alignof(float) != 0)
      fail("advance_counters", "a step counter address is null or misaligned");
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

}  // namespace fused_optim::cpu
