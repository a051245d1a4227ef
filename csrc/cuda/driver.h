// What every CUDA entry point shares: argument checks (std::invalid_argument, a ValueError in
// Python, before anything is launched), the dispatch on the (param, state) dtype pair, and the
// launch of a kernel over a tensor list on the caller's stream. Knows no optimizer.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fused_optim/dtypes.h"
#include "fused_optim/multi_tensor.cuh"
#include "ops.h"

namespace fused_optim::cuda {

[[noreturn]] void fail(const char* op, const std::string& msg);

DType parse_dtype(const char* op, int code);
// States are float64 for float64 params; float32 (default) or bfloat16 otherwise.
DType parse_state_dtype(const char* op, DType param, int code);
// lists[k][t] for role k of role_dtypes; zero-size tensors may have any address.
void check_lists(const char* op, const AddressLists& lists, const std::vector<DType>& role_dtypes,
                 const std::vector<int64_t>& numels);
// Exactly one of values / addresses has one entry per tensor (addresses: float32 scalars).
void check_steps(const char* op, const std::vector<double>& values,
                 const std::vector<uintptr_t>& addresses, size_t ntensors);
// A device scalar's address: aligned to `size`; 0 allowed only when not `required`.
void check_scalar(const char* op, const char* what, uintptr_t address, int64_t size, bool required);
// Every hyperparameter must be finite (NaN would silently poison every element).
void check_finite(const char* op, std::initializer_list<std::pair<const char*, double>> values);

// Checks a param mode (math/rounding.h) against the param dtype and, for stochastic
// rounding, the tensor indices (one per tensor); in the master/remainder modes appends the
// dtype of that last list to `roles` (float32, or 2-byte elements for the int16 remainders).
void check_param_mode(const char* op, DType param, int mode, const std::vector<uint32_t>& tensor_indices,
                      size_t ntensors, std::vector<DType>& roles);

// Calls f(P{}, S{}) with the C++ storage types of the param and state dtypes.
template <class F>
void dispatch_types(DType param, DType state, F&& f) {
  const bool bf16_state = state == DType::kBFloat16;
  switch (param) {
    case DType::kFloat32: return bf16_state ? f(float{}, bf16_bits{}) : f(float{}, float{});
    case DType::kFloat64: return f(double{}, double{});
    case DType::kBFloat16: return bf16_state ? f(bf16_bits{}, bf16_bits{}) : f(bf16_bits{}, float{});
    case DType::kFloat16: return bf16_state ? f(fp16_bits{}, bf16_bits{}) : f(fp16_bits{}, float{});
  }
}

// kernel<<<blocks, kBlockThreads, 0, stream>>>(args...), written as cudaLaunchKernel (the
// same launch) so that tests/cuda_emulation can run the kernels as host code.
template <class... KArgs>
void launch(const char* op, void (*kernel)(KArgs...), int64_t blocks, uintptr_t stream,
            const std::remove_const_t<KArgs>&... args) {
  if (blocks > int64_t(INT32_MAX)) fail(op, "too many chunks for one launch");
  void* pointers[] = {const_cast<void*>(static_cast<const void*>(&args))...};
  check_cuda(op, cudaLaunchKernel(kernel, dim3(unsigned(blocks)), dim3(kBlockThreads), pointers, 0,
                                  reinterpret_cast<cudaStream_t>(stream)));
}

// Launches kernel(table, args...) with one block per chunk for each table of the lists on
// `device`. Returns the total chunk count.
template <int NROLES, class... KArgs, class... Args>
int64_t launch_over(const char* op, void (*kernel)(const TensorTable<NROLES>, KArgs...),
                    const TensorLists& lists, int device, uintptr_t stream, const Args&... args) {
  if (device < 0) fail(op, "device index must be >= 0, got " + std::to_string(device));
  const DeviceGuard guard(op, device);
  return for_each_launch<NROLES>(lists, [&](const TensorTable<NROLES>& table, int64_t chunks) {
    launch(op, kernel, chunks, stream, table, args...);
  });
}

}  // namespace fused_optim::cuda
