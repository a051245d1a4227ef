#include "driver.h"
#include "fused_optim/math/rounding.h"

#include <cmath>

namespace fused_optim::cuda {

void fail(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("fused_optim._cuda.") + op + ": " + msg);
}

DType parse_dtype(const char* op, int code) {
  if (code < 0 || code > 3) fail(op, "unknown dtype code " + std::to_string(code));
  return DType(code);
}

DType parse_state_dtype(const char* op, DType param, int code) {
  const DType state = parse_dtype(op, code);
  const bool ok = param == DType::kFloat64 ? state == DType::kFloat64
                                           : state == DType::kFloat32 || state == DType::kBFloat16;
  if (!ok)
    fail(op, std::string("states of ") + dtype_name(param) + " params must be " +
                 (param == DType::kFloat64 ? "float64" : "float32 or bfloat16") + ", got " +
                 dtype_name(state));
  return state;
}

void check_lists(const char* op, const AddressLists& lists, const std::vector<DType>& role_dtypes,
                 const std::vector<int64_t>& numels) {
  if (lists.size() != role_dtypes.size())
    fail(op, "expected " + std::to_string(role_dtypes.size()) + " tensor lists, got " +
                 std::to_string(lists.size()));
  for (size_t k = 0; k < lists.size(); ++k) {
    if (lists[k].size() != numels.size())
      fail(op, "tensor list " + std::to_string(k) + " has " + std::to_string(lists[k].size()) +
                   " entries for " + std::to_string(numels.size()) + " tensors");
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

void check_steps(const char* op, const std::vector<double>& values,
                 const std::vector<uintptr_t>& addresses, size_t ntensors) {
  const bool on_host = values.size() == ntensors && addresses.empty();
  const bool on_device = addresses.size() == ntensors && values.empty();
  if (!on_host && !on_device)
    fail(op, "expected one step per tensor (" + std::to_string(ntensors) +
                 "), either as host values or as device addresses; got " +
                 std::to_string(values.size()) + " values and " + std::to_string(addresses.size()) +
                 " addresses");
  for (uintptr_t a : addresses)
    if (a == 0 || a % sizeof(float) != 0) fail(op, "a step counter address is null or misaligned");
  for (double v : values)
    if (!std::isfinite(v) || v < 0) fail(op, "a step count is negative or not finite");
}

void check_scalar(const char* op, const char* what, uintptr_t address, int64_t size, bool required) {
  if (address == 0) {
    if (required) fail(op, std::string(what) + " address is null");
    return;
  }
  if (address % uintptr_t(size) != 0) fail(op, std::string(what) + " address is misaligned");
}

void check_finite(const char* op, std::initializer_list<std::pair<const char*, double>> values) {
  for (const auto& [name, value] : values)
    if (!std::isfinite(value)) fail(op, std::string(name) + " is not finite");
}

int64_t chunk_count(const std::vector<int64_t>& numels) {
  int64_t total = 0;
  for (int64_t n : numels) {
    if (n < 0) fail("chunk_count", "negative numel");
    total += chunks_in(n, kChunkElems);
  }
  return total;
}

void check_param_mode(const char* op, DType param, int mode, const std::vector<uint32_t>& tensor_indices,
                      size_t ntensors, std::vector<DType>& roles) {
  if (mode < math::kPlainParam || mode >= math::kParamModes) fail(op, "unknown param mode " + std::to_string(mode));
  const bool bf16_only = mode == math::kRemainderParam || mode == math::kStochasticParam;
  if (mode != math::kPlainParam && param != DType::kBFloat16 && (bf16_only || param != DType::kFloat16))
    fail(op, std::string("param mode ") + std::to_string(mode) + " does not serve " + dtype_name(param) +
                 " params (master weights: bf16/fp16; remainders and stochastic rounding: bf16)");
  if (mode == math::kStochasticParam && tensor_indices.size() != ntensors)
    fail(op, "tensor_indices has " + std::to_string(tensor_indices.size()) + " entries for " +
                 std::to_string(ntensors) + " tensors");
  if (mode == math::kMasterParam) roles.push_back(DType::kFloat32);
  if (mode == math::kRemainderParam) roles.push_back(DType::kBFloat16);
}

int64_t tensors_per_launch(int roles) {
  switch (roles) {
    case 2: return TensorTable<2>::kCapacity;
    case 3: return TensorTable<3>::kCapacity;
    case 4: return TensorTable<4>::kCapacity;
    case 5: return TensorTable<5>::kCapacity;
    case 6: return TensorTable<6>::kCapacity;
  }
  fail("tensors_per_launch", "roles must be 2 to 6");
}

}  // namespace fused_optim::cuda
