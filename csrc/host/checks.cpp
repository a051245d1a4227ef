#include "fused_optim/checks.h"

#include <cmath>

#include "fused_optim/math/rounding.h"

namespace fused_optim {

DType parse_dtype(const std::string& where, int code) {
  if (code < 0 || code > 3) fail(where, "unknown dtype code " + std::to_string(code));
  return DType(code);
}

DType parse_state_dtype(const std::string& where, DType param, int code, bool bf16_states) {
  const DType math = param == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  if (code == -1) return math;
  const DType state = parse_dtype(where, code);
  const bool bf16 = bf16_states && param != DType::kFloat64;
  if (state != math && !(bf16 && state == DType::kBFloat16))
    fail(where, std::string("states of ") + dtype_name(param) + " params must be " + dtype_name(math) +
                    (bf16 ? " or bfloat16" : "") + ", got " + dtype_name(state));
  return state;
}

void check_per_tensor(const std::string& where, const char* what, size_t got, size_t ntensors) {
  if (got != ntensors)
    fail(where, std::string(what) + " has " + std::to_string(got) + " entries for " + std::to_string(ntensors) +
                    " tensors");
}

void check_lists(const std::string& where, const AddressLists& lists, const std::vector<DType>& role_dtypes,
                 const std::vector<int64_t>& numels, const std::vector<size_t>& unread) {
  if (lists.size() != role_dtypes.size())
    fail(where,
         "expected " + std::to_string(role_dtypes.size()) + " tensor lists, got " + std::to_string(lists.size()));
  for (size_t k = 0; k < lists.size(); ++k) {
    bool read = true;
    for (size_t u : unread) read = read && u != k;
    if (!read && lists[k].empty()) continue;
    check_per_tensor(where, ("tensor list " + std::to_string(k)).c_str(), lists[k].size(), numels.size());
    if (!read) continue;
    const auto size = uintptr_t(dtype_size(role_dtypes[k]));
    for (size_t t = 0; t < numels.size(); ++t) {
      if (numels[t] < 0) fail(where, "negative numel at tensor " + std::to_string(t));
      if (numels[t] == 0) continue;
      if (lists[k][t] == 0)
        fail(where, "null address in list " + std::to_string(k) + " at tensor " + std::to_string(t));
      if (lists[k][t] % size != 0)
        fail(where, "address in list " + std::to_string(k) + " at tensor " + std::to_string(t) +
                        " is not aligned to its " + dtype_name(role_dtypes[k]) + " elements");
    }
  }
}

void check_threads(const std::string& where, int num_threads) {
  if (num_threads < 1) fail(where, "num_threads must be >= 1, got " + std::to_string(num_threads));
}

void check_steps(const Call& call, bool device_counters) {
  const size_t ntensors = call.numels.size();
  const auto& values = call.steps;
  const auto& addresses = call.step_addresses;
  if (!device_counters && !addresses.empty())
    fail(call.where, "steps: this module reads the step counts on the host, not at device addresses");
  const bool on_host = values.size() == ntensors && addresses.empty();
  const bool on_device = addresses.size() == ntensors && values.empty();
  if (!on_host && !on_device)
    fail(call.where, "steps: expected one step per tensor (" + std::to_string(ntensors) + "), got " +
                         std::to_string(values.size()) +
                         (device_counters ? " values and " + std::to_string(addresses.size()) + " device addresses"
                                          : ""));
  for (uintptr_t a : addresses)
    if (a == 0 || a % sizeof(float) != 0) fail(call.where, "a step counter address is null or misaligned");
  for (double v : values)
    if (!std::isfinite(v) || v < 0) fail(call.where, "a step count is negative or not finite");
}

void check_global_step(const Call& call, bool device_counter) {
  if (call.global_step_address != 0 && !device_counter)
    fail(call.where, "global_step: this module reads the count on the host, not at a device address");
  check_scalar(call.where, "global_step", call.global_step_address, 8, false);
  if (call.global_step_address == 0 && !(std::isfinite(call.global_step) && call.global_step >= 0.0))
    fail(call.where, "global_step must be finite and >= 0");
}

void check_scalar(const std::string& where, const char* what, uintptr_t address, int64_t size, bool required) {
  if (address == 0) {
    if (required) fail(where, std::string(what) + " address is null");
    return;
  }
  if (address % uintptr_t(size) != 0) fail(where, std::string(what) + " address is misaligned");
}

void check_storage(const Call& call, DType param, std::vector<DType>& roles) {
  const int mode = call.storage_mode;
  if (mode < math::kPlainStorage || mode >= math::kStorageModes)
    fail(call.where, "unknown param storage mode " + std::to_string(mode));
  const bool bf16_only = mode == math::kRemainderStorage || mode == math::kStochasticStorage;
  if (mode != math::kPlainStorage && param != DType::kBFloat16 && (bf16_only || param != DType::kFloat16))
    fail(call.where, "param storage mode " + std::to_string(mode) + " does not serve " + dtype_name(param) +
                         " params (master weights: bf16/fp16; remainders and stochastic rounding: bf16)");
  if (mode == math::kStochasticStorage)
    check_per_tensor(call.where, "tensor_indices", call.tensor_indices.size(), call.numels.size());
  if (mode == math::kMasterStorage || mode == math::kRemainderStorage) {
    // (the remainders are int16: checked as 2-byte elements)
    roles.push_back(mode == math::kMasterStorage ? DType::kFloat32 : DType::kBFloat16);
    if (call.lists.size() != roles.size())
      fail(call.where, "expected " + std::to_string(roles.size()) +
                           " tensor lists (the last: masters or remainders), got " + std::to_string(call.lists.size()));
  }
}

}  // namespace fused_optim
