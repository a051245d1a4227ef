#include "driver.h"
#include "param_access.h"

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

ParamStorage param_storage(const char* op, const AddressLists& lists, const std::vector<int64_t>& numels,
                           DType param, int mode, uint32_t seed, const std::vector<uint32_t>& tensor_indices,
                           const std::vector<double>& steps, std::vector<DType>& roles) {
  if (mode < math::kPlainParam || mode >= math::kParamModes)
    fail(op, "unknown param mode " + std::to_string(mode));
  const bool bf16_only = mode == math::kRemainderParam || mode == math::kStochasticParam;
  if (mode != math::kPlainParam && param != DType::kBFloat16 && (bf16_only || param != DType::kFloat16))
    fail(op, std::string("param mode ") + std::to_string(mode) + " does not serve " + dtype_name(param) +
                 " params (master weights: bf16/fp16; remainders and stochastic rounding: bf16)");
  ParamStorage storage;
  storage.mode = mode;
  if (mode == math::kStochasticParam) {
    check_per_tensor(op, "tensor indices", tensor_indices.size(), numels.size());
    check_per_tensor(op, "steps", steps.size(), numels.size());
    storage.keys.resize(numels.size());
    for (size_t t = 0; t < numels.size(); ++t)
      storage.keys[t] = math::stochastic_key(seed, tensor_indices[t], uint32_t(uint64_t(steps[t])));
  }
  if (mode == math::kMasterParam || mode == math::kRemainderParam) {
    // (the remainders are int16: checked as 2-byte elements)
    roles.push_back(mode == math::kMasterParam ? DType::kFloat32 : DType::kBFloat16);
    if (lists.size() != roles.size())
      fail(op, "expected " + std::to_string(roles.size()) + " tensor lists (the last: masters or remainders), got " +
                   std::to_string(lists.size()));
    storage.extra = &lists.back();
  }
  return storage;
}

}  // namespace fused_optim::cpu

