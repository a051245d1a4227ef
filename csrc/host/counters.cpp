// counters.h's out-of-line part.
#include "fused_optim/counters.h"

#include "fused_optim/call.h"

namespace fused_optim {

std::vector<double> read_counters(const std::string& where, const std::vector<uintptr_t>& addresses) {
  for (uintptr_t a : addresses) {
    if (a == 0 || a % alignof(float) != 0) fail(where, "a step counter address is null or misaligned");
  }
  std::vector<double> counts;
  counts.reserve(addresses.size());
  for (uintptr_t a : addresses) counts.push_back(double(*reinterpret_cast<const float*>(a)));
  return counts;
}

}  // namespace fused_optim
