// The argument checks both forms of Adai's pass 1 share (adai_second_moment in adai.cpp and
// adai_clip_sums in adai_clip.cpp): lists param, grad (then masters/remainders in those
// storage modes), one step and one carried sum(v) per tensor. Throws before anything is read.
#pragma once
#include <vector>

#include "entry.h"

namespace fused_optim::cpu {

inline ParamStorage check_adai_pass1(const Call& call, DType param) {
  check_per_tensor(call.where, "v_sums", call.v_sums.size(), call.numels.size());
  std::vector<DType> roles{param, param};
  return check_call(call, roles, Steps::kPerTensor);
}

}  // namespace fused_optim::cpu
