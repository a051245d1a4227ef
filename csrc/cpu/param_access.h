// How the CPU loops load and store the param of an element in each param storage mode
// (math/rounding.h's StorageMode): the param itself, its fp32 master (the param then receives
// the master rounded), the bf16 param joined with its 16-bit remainder, or the bf16 param
// rounded stochastically. MODE is a compile-time constant, so the plain mode compiles to the
// plain load and store.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "driver.h"
#include "fused_optim/checks.h"
#include "fused_optim/math/rounding.h"
#include "prefetch.h"

namespace fused_optim::cpu {

// A chunk's extra param data: the master (float) or remainder (int16_t) values of its elements,
// and for stochastic rounding the chunk's hash key and first element index in its tensor.
struct ParamExtra {
  void* values = nullptr;
  uint32_t high_key = 0;
  int64_t begin = 0;
};

template <int MODE, class P, class T = math_t<P>>
FO_INLINE T load_param(const P* p, const ParamExtra& x, int64_t i) {
  if constexpr (MODE == math::kMasterStorage) {
    return static_cast<const float*>(x.values)[i];
  } else if constexpr (MODE == math::kRemainderStorage) {
    return math::bf16_join(p[i], static_cast<const int16_t*>(x.values)[i]);
  } else {
    return T(load_value(p[i]));
  }
}

template <int MODE, class P, class T>
FO_INLINE void store_param(P* p, const ParamExtra& x, int64_t i, T value) {
  if constexpr (MODE == math::kMasterStorage) {
    static_cast<float*>(x.values)[i] = value;
    math::store_from_master(p[i], value);
  } else if constexpr (MODE == math::kRemainderStorage) {
    math::bf16_split(value, p[i], static_cast<int16_t*>(x.values)[i]);
  } else if constexpr (MODE == math::kStochasticStorage) {
    p[i].x = math::bf16_round_bits(value, math::stochastic_increment(x.high_key, x.begin + i));
  } else {
    store_value(p[i], value);
  }
}

// Prefetches the param data of the kPrefetchBlock elements from i on (prefetch.h): the param,
// and its master or remainder where the mode keeps one; all of it is written back.
template <int MODE, class P>
FO_INLINE void prefetch_param(const P* p, const ParamExtra& x, int64_t i) {
  prefetch_block<true>(p + i);
  if constexpr (MODE == math::kMasterStorage) prefetch_block<true>(static_cast<const float*>(x.values) + i);
  if constexpr (MODE == math::kRemainderStorage) prefetch_block<true>(static_cast<const int16_t*>(x.values) + i);
}

// A call's param storage as the loops use it: the mode, the list of master/remainder
// addresses (the last role of the call's lists), and per tensor the stochastic-rounding key
// (math::stochastic_key of the seed, the tensor's index among all params and its step).
struct ParamStorage {
  int mode = math::kPlainStorage;
  const std::vector<uintptr_t>* extra = nullptr;
  std::vector<uint32_t> keys;

  // The extra data of a chunk of tensor t from element `begin` on.
  ParamExtra chunk(int64_t t, int64_t begin) const {
    ParamExtra x;
    x.begin = begin;
    if (mode == math::kMasterStorage) x.values = address<float>((*extra)[size_t(t)], begin);
    if (mode == math::kRemainderStorage) x.values = address<int16_t>((*extra)[size_t(t)], begin);
    if (mode == math::kStochasticStorage) x.high_key = math::stochastic_high_key(keys[size_t(t)], begin);
    return x;
  }
};

// Checks the call's param storage (check_storage: `roles` gets the dtype of the masters /
// remainders list appended) and describes it. The stochastic keys take the step each tensor
// takes: its own (steps, already checked) or DualAdam's global one for every tensor.
ParamStorage param_storage(const Call& call, DType param, std::vector<DType>& roles);

// Calls f(std::integral_constant<int, MODE>{}) for the call's storage mode, instantiating only the
// modes a param type can have: plain for fp32/fp64, master for fp16, all four for bf16.
template <class P, class F>
decltype(auto) dispatch_storage_mode(int mode, F&& f) {
  if constexpr (std::is_same_v<P, bf16_bits>) {
    return with_constant<math::kStorageModes>(mode, std::forward<F>(f));
  } else if constexpr (std::is_same_v<P, fp16_bits>) {
    return with_constant<2>(mode, std::forward<F>(f));
  } else {
    return f(std::integral_constant<int, math::kPlainStorage>{});
  }
}

}  // namespace fused_optim::cpu
