// The argument checks both forms of Adai's pass 1 share (adai_vhat_sum in adai.cpp and
// adai_clip_sums in adai_clip.cpp): lists param, grad (then masters/remainders in those param
// modes), one step and one carried sum(v) per tensor. Throws before anything is read.
#pragma once
#include <cstdint>
#include <vector>

#include "param_access.h"

namespace fused_optim::cpu {

inline ParamStorage check_adai_pass1(const char* op, const AddressLists& lists, const std::vector<int64_t>& numels,
                                     const std::vector<double>& steps, const std::vector<double>& v_sums,
                                     DType param, int num_threads, int param_mode, uint32_t seed,
                                     const std::vector<uint32_t>& tensor_indices) {
  check_per_tensor(op, "steps", steps.size(), numels.size());
  check_per_tensor(op, "v_sums", v_sums.size(), numels.size());
  check_threads(op, num_threads);
  std::vector<DType> roles{param, param};
  ParamStorage storage = param_storage(op, lists, numels, param, param_mode, seed, tensor_indices, steps, roles);
  check_lists(op, lists, roles, numels);
  return storage;
}

}  // namespace fused_optim::cpu
