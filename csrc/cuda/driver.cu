#include "driver.h"

namespace fused_optim::cuda {

CallDTypes call_dtypes(const Call& call) {
  const DType param = parse_dtype(call.where, call.dtype);
  return CallDTypes{param, parse_state_dtype(call.where, param, call.state_dtype, true)};
}

void check_call(const Call& call, std::vector<DType>& roles, Steps steps, const std::vector<size_t>& unread) {
  if (call.device < 0) fail(call.where, "device index must be >= 0, got " + std::to_string(call.device));
  if (steps == Steps::kPerTensor) check_steps(call, true);
  else check_global_step(call, true);
  check_scalar(call.where, "grad_scale", call.grad_scale, 4, false);
  check_scalar(call.where, "found_inf", call.found_inf, 4, false);
  check_storage(call, roles[0], roles);
  check_lists(call.where, call.lists, roles, call.numels, unread);
}

int64_t chunk_count(const std::vector<int64_t>& numels) {
  int64_t total = 0;
  for (int64_t n : numels) {
    if (n < 0) fail("fused_optim._cuda.chunk_count", "negative numel");
    total += chunks_in(n, kChunkElems);
  }
  return total;
}

int64_t tensors_per_launch(int roles) {
  switch (roles) {
    case 2: return TensorTable<2>::kCapacity;
    case 3: return TensorTable<3>::kCapacity;
    case 4: return TensorTable<4>::kCapacity;
    case 5: return TensorTable<5>::kCapacity;
    case 6: return TensorTable<6>::kCapacity;
  }
  fail("fused_optim._cuda.tensors_per_launch", "roles must be 2 to 6");
}

}  // namespace fused_optim::cuda
