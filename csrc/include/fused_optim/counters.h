// The optimizers' step counters (and Adai's carried sums) as host memory: 0-dim float32 tensors on the CPU, read and
// advanced by address in one native call for a whole list. torch's per-tensor ops (item(),
// torch._foreach_add_) cost hundreds of nanoseconds to microseconds per CPU scalar, which a
// step over thousands of params would pay every time. Plain C++, linked into both modules.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fused_optim {

// The count each counter holds (throws, reading nothing, if an address is null or misaligned).
std::vector<double> read_counters(const std::string& where, const std::vector<uintptr_t>& addresses);

// The value of each 0-dim float64 CPU tensor (Adai's carried sums of exp_avg_sq), the same way.
std::vector<double> read_sums(const std::string& where, const std::vector<uintptr_t>& addresses);

}  // namespace fused_optim
