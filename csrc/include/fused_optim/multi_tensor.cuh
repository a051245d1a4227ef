// Launch machinery of the multi-tensor CUDA kernels; knows no optimizer.
//
// A group's tensors travel in the kernel's argument struct (TensorTable): one address per
// role (param, grad, states...) and tensor, the element counts, the chunk prefix of
// chunking.h and a per-tensor step counter (a host value, or a device address under graph
// capture). Block b of a launch updates chunk b of the table (locate_chunk, the same map the
// CPU loops use). Lists longer than one table's capacity go out in several launches.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fused_optim/chunking.h"
#include "fused_optim/dtypes.h"
#include "fused_optim/reduction.h"

namespace fused_optim::cuda {

// 512 threads cover a 65536-element chunk in 32 (fp32) or 16 (16-bit params) pack steps per
// thread: enough independent loads in flight per SM to saturate HBM.
constexpr int kBlockThreads = 512;

// Kernel parameters may fill 32764 bytes since CUDA 12.1 (sm_70 and newer). A table takes at
// most 30 KiB, leaving room for the hyperparameter structs beside it.
constexpr int64_t kTableBytes = 30 * 1024;

template <int NROLES>
struct TensorTable {
  // per tensor: NROLES addresses, numel, chunk prefix, counter address and value, tag
  static constexpr int kCapacity = int((kTableBytes - 64) / (8 * NROLES + 8 + 8 + 8 + 4 + 4));
  void* addresses[NROLES][kCapacity];
  int64_t numels[kCapacity];
  int64_t chunk_prefix[kCapacity + 1];
  // the step count before this step: read from the device when the address is set
  // (capturable: a replayed graph sees the advanced counter), else the host's value
  const float* counter_addresses[kCapacity];
  float counter_values[kCapacity];
  // the tensor's index among all the optimizer's params (stochastic rounding's key)
  uint32_t tags[kCapacity];
  int64_t ntensors;
  int64_t chunk_base;  // global index of this launch's first chunk (Adai's partial sums)
};
static_assert(sizeof(TensorTable<6>) <= kTableBytes, "table exceeds its parameter budget");

// GradScaler support: g is divided by *grad_scale; a nonzero *found_inf skips the whole step.
// Both are device scalars read inside the kernel (no host sync); null when unused.
struct AmpArgs {
  const float* grad_scale;
  const float* found_inf;
};

#if defined(__CUDACC__) || defined(FO_CUDA_EMULATION)  // see tests/cuda_emulation

template <int NROLES>
__device__ FO_INLINE ChunkSpan table_chunk(const TensorTable<NROLES>& table) {
  return locate_chunk(table.chunk_prefix, table.numels, table.ntensors, kChunkElems,
                      int64_t(blockIdx.x));
}

template <class T, int NROLES>
__device__ FO_INLINE T* role_address(const TensorTable<NROLES>& table, int role, const ChunkSpan& s) {
  return static_cast<T*>(table.addresses[role][s.tensor]) + s.begin;
}

template <int NROLES>
__device__ FO_INLINE double step_before(const TensorTable<NROLES>& table, int64_t tensor) {
  const float* a = table.counter_addresses[tensor];
  return double(a != nullptr ? *a : table.counter_values[tensor]);
}

__device__ FO_INLINE bool step_skipped(const AmpArgs& amp) {
  return amp.found_inf != nullptr && *amp.found_inf != 0.0f;
}

template <class T>
__device__ FO_INLINE T grad_divisor(const AmpArgs& amp) {
  return amp.grad_scale != nullptr ? T(*amp.grad_scale) : T(1);
}

// Elements per pack: one 16-byte vector of the param type (states of a wider type then take
// two vectors per pack).
template <class P>
constexpr int kPackWidth = int(16 / sizeof(P));

template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T x[W];
};

template <int W, class T>
__device__ FO_INLINE bool pack_aligned(const T* address) {
  return aligned_for_pack(reinterpret_cast<uintptr_t>(address), 0, int64_t(sizeof(T)), W);
}

// Loads elements [i, i + W) of a chunk of n: one vector load when `full` (the chunk is
// aligned and the pack lies inside it), else element by element, zeros past the end.
template <int W, class T>
__device__ FO_INLINE void load_pack(T (&r)[W], const T* base, int64_t i, int64_t n, bool full) {
  if (full) {
    *reinterpret_cast<Pack<T, W>*>(r) = *reinterpret_cast<const Pack<T, W>*>(base + i);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j)
      if (i + j < n) r[j] = base[i + j];
  }
}

template <int W, class T>
__device__ FO_INLINE void store_pack(T* base, const T (&r)[W], int64_t i, int64_t n, bool full) {
  if (full) {
    *reinterpret_cast<Pack<T, W>*>(base + i) = *reinterpret_cast<const Pack<T, W>*>(r);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j)
      if (i + j < n) base[i + j] = r[j];
  }
}

// Walks a chunk of n elements in packs of W: thread k takes packs k, k + blockDim, ...
// body(i, full) handles elements [i, i + W). 64-bit offsets throughout.
template <int W, class Body>
__device__ FO_INLINE void for_each_pack(int64_t n, bool aligned, Body&& body) {
  for (int64_t i = int64_t(threadIdx.x) * W; i < n; i += int64_t(blockDim.x) * W)
    body(i, aligned && i + W <= n);
}

// The block's sum of one double per thread, in the fixed tree of reduction.h (tree_sum_step),
// level by level; the result is valid in thread 0.
__device__ FO_INLINE double block_sum(double value) {
  __shared__ double values[kBlockThreads];
  values[threadIdx.x] = value;
  __syncthreads();
  for (int64_t width = 1; width < kBlockThreads; width *= 2) {
    tree_sum_step(values, kBlockThreads, width, threadIdx.x);
    __syncthreads();
  }
  return values[0];
}

#endif  // __CUDACC__ || FO_CUDA_EMULATION

// ---- host side ----

// Raises a Python RuntimeError (pybind11 translates std::runtime_error) on a CUDA error;
// where: the module and operation ("fused_optim._cuda.adam_step").
inline void check_cuda(const std::string& where, cudaError_t err) {
  if (err != cudaSuccess)
    throw std::runtime_error(where + ": CUDA error " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// Makes `device` current for the launch and restores the caller's device afterwards. Fails
// with a clear error where no CUDA device or driver is usable (the module imports anyway).
class DeviceGuard {
 public:
  DeviceGuard(const std::string& where, int device) {
    const cudaError_t err = cudaGetDevice(&previous_);
    if (err != cudaSuccess)
      throw std::runtime_error(where + ": no usable CUDA device or driver here (" + cudaGetErrorName(err) + ": " +
                               cudaGetErrorString(err) + ")");
    if (previous_ != device) check_cuda(where, cudaSetDevice(device));
    switched_ = previous_ != device;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// A group as sent from Python: addresses[role][tensor], element counts and the step counters
// (host values or device addresses, one of the two lists filled; both empty where the
// optimizer has no per-tensor step).
struct TensorLists {
  const std::vector<std::vector<uintptr_t>>& addresses;
  const std::vector<int64_t>& numels;
  const std::vector<double>& step_values;
  const std::vector<uintptr_t>& step_addresses;
  const std::vector<uint32_t>* tags = nullptr;  // per tensor, where the kernel needs them
};

// Fills tables from the lists (skipping zero-size tensors, which own no chunk) and calls
// launch(table, nchunks) for each full table and the last one. Returns the total chunk count.
template <int NROLES, class Launch>
int64_t for_each_launch(const TensorLists& lists, Launch&& launch) {
  using Table = TensorTable<NROLES>;
  auto table = std::make_unique<Table>();  // 30 KiB: off the (possibly small) thread stack
  int64_t total = 0;
  auto flush = [&]() {
    const int64_t nchunks = table->chunk_prefix[table->ntensors];
    if (nchunks > 0) launch(*table, nchunks);
    total += nchunks;
    table->ntensors = 0;
    table->chunk_base = total;
    table->chunk_prefix[0] = 0;
  };
  table->ntensors = 0;
  table->chunk_base = 0;
  table->chunk_prefix[0] = 0;
  for (size_t t = 0; t < lists.numels.size(); ++t) {
    if (lists.numels[t] == 0) continue;
    const int64_t k = table->ntensors;
    // (a role the call leaves out, as max_exp_avg_sq without amsgrad, is an empty list)
    for (int r = 0; r < NROLES; ++r)
      table->addresses[r][k] = r < int(lists.addresses.size()) && !lists.addresses[r].empty()
                                   ? reinterpret_cast<void*>(lists.addresses[r][t])
                                   : nullptr;
    table->numels[k] = lists.numels[t];
    table->chunk_prefix[k + 1] = table->chunk_prefix[k] + chunks_in(lists.numels[t], kChunkElems);
    table->counter_addresses[k] =
        lists.step_addresses.empty() ? nullptr : reinterpret_cast<const float*>(lists.step_addresses[t]);
    table->counter_values[k] = lists.step_values.empty() ? 0.0f : float(lists.step_values[t]);
    table->tags[k] = lists.tags != nullptr && !lists.tags->empty() ? (*lists.tags)[t] : 0u;
    table->ntensors = k + 1;
    if (table->ntensors == Table::kCapacity) flush();
  }
  flush();
  return total;
}

}  // namespace fused_optim::cuda
