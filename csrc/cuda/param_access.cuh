// How the CUDA kernels load and store a pack of params in each param storage mode
// (math/rounding.h's StorageMode; the CPU mirror is csrc/cpu/param_access.h): the param
// itself, its fp32 master (the param then receives the master rounded; the param is not read),
// the bf16 param joined with its 16-bit remainder, or the bf16 param rounded stochastically.
// MODE is a template constant: the plain mode compiles to the plain pack load and store.
#pragma once
#include "fused_optim/math/rounding.h"
#include "fused_optim/multi_tensor.cuh"

namespace fused_optim::cuda {

// The params of one chunk: the param pointer, the master/remainder pointer of the table's
// `extra` role (MODE 1/2: the table's last role) and, for stochastic rounding, the chunk's
// hash key.
template <int MODE, class P, int W>
struct ParamChunk {
  P* p;
  float* master = nullptr;
  int16_t* remainder = nullptr;
  uint32_t high_key = 0;
  int64_t begin = 0;

  // key: math::stochastic_key of the tensor and its step (MODE 3 only)
  template <int NROLES>
  __device__ FO_INLINE ParamChunk(const TensorTable<NROLES>& table, const ChunkSpan& s, int extra, uint32_t key)
      : p(role_address<P>(table, 0, s)), begin(s.begin) {
    if constexpr (MODE == math::kMasterStorage) master = role_address<float>(table, extra, s);
    if constexpr (MODE == math::kRemainderStorage) remainder = role_address<int16_t>(table, extra, s);
    if constexpr (MODE == math::kStochasticStorage) high_key = math::stochastic_high_key(key, s.begin);
  }

  __device__ FO_INLINE bool aligned() const {
    if constexpr (MODE == math::kMasterStorage) return pack_aligned<W>(master);  // (p is only written)
    if constexpr (MODE == math::kRemainderStorage) return pack_aligned<W>(p) && pack_aligned<W>(remainder);
    return pack_aligned<W>(p);
  }

  // Elements [i, i + W) of the chunk (of n) into math registers; pr keeps the param pack.
  template <class T>
  __device__ FO_INLINE void load(T (&out)[W], P (&pr)[W], int64_t i, int64_t n, bool full) const {
    if constexpr (MODE == math::kMasterStorage) {
      float xr[W] = {};
      load_pack(xr, master, i, n, full);
#pragma unroll
      for (int j = 0; j < W; ++j) out[j] = T(xr[j]);
    } else if constexpr (MODE == math::kRemainderStorage) {
      int16_t rr[W] = {};
      load_pack(pr, p, i, n, full);
      load_pack(rr, remainder, i, n, full);
#pragma unroll
      for (int j = 0; j < W; ++j) out[j] = T(math::bf16_join(pr[j], rr[j]));
    } else {
      load_pack(pr, p, i, n, full);
#pragma unroll
      for (int j = 0; j < W; ++j) out[j] = T(load_value(pr[j]));
    }
  }

  // The updated values of elements [i, i + W) back to param (and master or remainder).
  template <class T>
  __device__ FO_INLINE void store(const T (&values)[W], P (&pr)[W], int64_t i, int64_t n, bool full) const {
    if constexpr (MODE == math::kMasterStorage) {
      float xr[W];
#pragma unroll
      for (int j = 0; j < W; ++j) {
        xr[j] = float(values[j]);
        math::store_from_master(pr[j], xr[j]);
      }
      store_pack(master, xr, i, n, full);
    } else if constexpr (MODE == math::kRemainderStorage) {
      int16_t rr[W];
#pragma unroll
      for (int j = 0; j < W; ++j) math::bf16_split(float(values[j]), pr[j], rr[j]);
      store_pack(remainder, rr, i, n, full);
    } else if constexpr (MODE == math::kStochasticStorage) {
#pragma unroll
      for (int j = 0; j < W; ++j)
        pr[j].x = math::bf16_round_bits(float(values[j]), math::stochastic_increment(high_key, begin + i + j));
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) store_value(pr[j], values[j]);
    }
    store_pack(p, pr, i, n, full);
  }
};

// Calls f(std::integral_constant<int, MODE>{}) for a launch's storage mode, instantiating only
// the modes a param type can have: plain for fp32/fp64, master for fp16, all four for bf16.
template <class P, class F>
void dispatch_storage_mode(int mode, F&& f) {
  if constexpr (std::is_same_v<P, bf16_bits>) {
    switch (mode) {
      case math::kMasterStorage: return f(std::integral_constant<int, math::kMasterStorage>{});
      case math::kRemainderStorage: return f(std::integral_constant<int, math::kRemainderStorage>{});
      case math::kStochasticStorage: return f(std::integral_constant<int, math::kStochasticStorage>{});
      default: return f(std::integral_constant<int, math::kPlainStorage>{});
    }
  } else if constexpr (std::is_same_v<P, fp16_bits>) {
    if (mode == math::kMasterStorage) return f(std::integral_constant<int, math::kMasterStorage>{});
    return f(std::integral_constant<int, math::kPlainStorage>{});
  } else {
    return f(std::integral_constant<int, math::kPlainStorage>{});
  }
}

// How many table roles a kernel with `roles` roles needs in a storage mode (one more for the
// masters or remainders, which come last).
constexpr int roles_with_storage(int roles, int mode) {
  return mode == math::kMasterStorage || mode == math::kRemainderStorage ? roles + 1 : roles;
}

}  // namespace fused_optim::cuda
