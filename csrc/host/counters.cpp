// counters.h's out-of-line part.
#include "fused_optim/counters.h"

#include "fused_optim/call.h"

namespace fused_optim {

namespace {

template <class T>
std::vector<double> read_all(const std::string& where, const std::vector<uintptr_t>& addresses) {
  for (uintptr_t a : addresses) {
    if (a == 0 || a % alignof(T) != 0) fail(where, "an address is null or misaligned");
  }
  std::vector<double> values;
  values.reserve(addresses.size());
  for (uintptr_t a : addresses) values.push_back(double(*reinterpret_cast<const T*>(a)));
  return values;
}

}  // namespace

std::vector<double> read_counters(const std::string& where, const std::vector<uintptr_t>& addresses) {
  return read_all<float>(where, addresses);
}

std::vector<double> read_sums(const std::string& where, const std::vector<uintptr_t>& addresses) {
  return read_all<double>(where, addresses);
}

}  // namespace fused_optim
