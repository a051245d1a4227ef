// What every CUDA entry point shares: the checks of its Call (fused_optim/checks.h, both
// modules'; std::invalid_argument, a ValueError in Python, before anything is launched), the
// dispatch on the (param, state) dtype pair, and the launch of a kernel over a tensor list on
// the caller's stream. Knows no optimizer.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "fused_optim/call.h"
#include "fused_optim/checks.h"
#include "fused_optim/dtypes.h"
#include "fused_optim/multi_tensor.cuh"
#include "launches.h"

namespace fused_optim::cuda {

enum class Steps { kPerTensor, kGlobal };

// The dtypes of a call's params and states (float64 states for float64 params; float32, the
// default, or bfloat16 otherwise).
struct CallDTypes {
  DType param, state;
};
CallDTypes call_dtypes(const Call& call);

// Checks the device index, the steps (one per tensor as host values or device counters, or
// DualAdam's global one), the GradScaler scalars, the param storage (whose list `roles` gets
// appended) and the lists against `roles`: the dtypes of every list the operation declares
// (params first, in the declaration's order; unread: those this call's flags leave out, which
// may be absent).
void check_call(const Call& call, std::vector<DType>& roles, Steps steps, const std::vector<size_t>& unread = {});

// The call's lists as the launches take them (steps and stochastic rounding's tensor indices).
inline TensorLists tensor_lists(const Call& call) {
  return TensorLists{call.lists, call.numels, call.steps, call.step_addresses, &call.tensor_indices};
}

// GradScaler's device scalars of the call (found_inf only where the operation writes).
inline AmpArgs amp_args(const Call& call, bool skip_on_found_inf = true) {
  return AmpArgs{reinterpret_cast<const float*>(call.grad_scale),
                 skip_on_found_inf ? reinterpret_cast<const float*>(call.found_inf) : nullptr};
}

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
void launch(const std::string& where, void (*kernel)(KArgs...), int64_t blocks, uintptr_t stream,
            const std::remove_const_t<KArgs>&... args) {
  if (blocks > int64_t(INT32_MAX)) fail(where, "too many chunks for one launch");
  void* pointers[] = {const_cast<void*>(static_cast<const void*>(&args))...};
  // the function type named: CUDA 12's cudaLaunchKernel<T> takes a const T*, from which nvcc
  // cannot deduce T for a function pointer (CUDA 13 takes a T*)
  check_cuda(where, cudaLaunchKernel<void(KArgs...)>(kernel, dim3(unsigned(blocks)), dim3(kBlockThreads), pointers,
                                                     0, reinterpret_cast<cudaStream_t>(stream)));
}

// Launches kernel(table, args...) with one block per chunk for each table of the call's lists
// on its device and stream. Returns the total chunk count.
template <int NROLES, class... KArgs, class... Args>
int64_t launch_over(const Call& call, void (*kernel)(const TensorTable<NROLES>, KArgs...), const Args&... args) {
  const DeviceGuard guard(call.where, call.device);
  return for_each_launch<NROLES>(tensor_lists(call), [&](const TensorTable<NROLES>& table, int64_t chunks) {
    launch(call.where, kernel, chunks, call.stream, table, args...);
  });
}

}  // namespace fused_optim::cuda
