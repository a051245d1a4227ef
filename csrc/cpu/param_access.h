// How the CPU loops load and store the param of an element in each ParamMode (math/
// rounding.h): the param itself, its fp32 master (the param then receives the master rounded),
// the bf16 param joined with its 16-bit remainder, or the bf16 param rounded stochastically.
// MODE is a compile-time constant, so the plain mode compiles to the plain load and store.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "driver.h"
#include "fused_optim/math/rounding.h"

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
  if constexpr (MODE == math::kMasterParam) {
    return static_cast<const float*>(x.values)[i];
  } else if constexpr (MODE == math::kRemainderParam) {
    return math::bf16_join(p[i], static_cast<const int16_t*>(x.values)[i]);
  } else {
    return T(load_value(p[i]));
  }
}

template <int MODE, class P, class T>
FO_INLINE void store_param(P* p, const ParamExtra& x, int64_t i, T value) {
  if constexpr (MODE == math::kMasterParam) {
    static_cast<float*>(x.values)[i] = value;
    math::store_from_master(p[i], value);
  } else if constexpr (MODE == math::kRemainderParam) {
    math::bf16_split(value, p[i], static_cast<int16_t*>(x.values)[i]);
  } else if constexpr (MODE == math::kStochasticParam) {
    p[i].x = math::bf16_round_bits(value, math::stochastic_increment(x.high_key, x.begin + i));
  } else {
    store_value(p[i], value);
  }
}

// What a call says about its params' storage: the mode, the list of master/remainder
// addresses (the last role of the call's lists), and per tensor the stochastic-rounding key
// (math::stochastic_key of the seed, the tensor's index among all params and its step).
struct ParamStorage {
  int mode = math::kPlainParam;
  const std::vector<uintptr_t>* extra = nullptr;
  std::vector<uint32_t> keys;

  // The extra data of a chunk of tensor t from element `begin` on.
  ParamExtra chunk(int64_t t, int64_t begin) const {
    ParamExtra x;
    x.begin = begin;
    if (mode == math::kMasterParam) x.values = address<float>((*extra)[size_t(t)], begin);
    if (mode == math::kRemainderParam) x.values = address<int16_t>((*extra)[size_t(t)], begin);
    if (mode == math::kStochasticParam) x.high_key = math::stochastic_high_key(keys[size_t(t)], begin);
    return x;
  }
};

// Checks a call's param mode against its param dtype and its tensor indices (one per tensor
// with stochastic rounding), and describes the storage; steps[t]: the step tensor t takes
// (DualAdam: the global one for every tensor). In the master and remainder modes the call's
// lists end with the master/remainder addresses: `roles` (the other lists' dtypes) gets that
// list's dtype appended for check_lists (float32, or 2-byte elements for the int16 remainders).
ParamStorage param_storage(const char* op, const AddressLists& lists, const std::vector<int64_t>& numels,
                           DType param, int mode, uint32_t seed, const std::vector<uint32_t>& tensor_indices,
                           const std::vector<double>& steps, std::vector<DType>& roles);

// Calls f(std::integral_constant<int, MODE>{}) for the call's mode, instantiating only the
// modes a param type can have: plain for fp32/fp64, master for fp16, all four for bf16.
template <class P, class F>
decltype(auto) dispatch_param_mode(int mode, F&& f) {
  if constexpr (std::is_same_v<P, bf16_bits>) {
    return with_constant<math::kParamModes>(mode, std::forward<F>(f));
  } else if constexpr (std::is_same_v<P, fp16_bits>) {
    return with_constant<2>(mode, std::forward<F>(f));
  } else {
    return f(std::integral_constant<int, math::kPlainParam>{});
  }
}

}  // namespace fused_optim::cpu
