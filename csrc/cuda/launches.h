// What fused_optim._cuda tells about its launches besides the operations (bound in
// bindings_cuda.cpp, which includes no CUDA header: plain C++ types only).
#pragma once
#include <cstdint>
#include <vector>

namespace fused_optim::cuda {

// Number of chunks (blocks, Adai partial sums) of a list.
int64_t chunk_count(const std::vector<int64_t>& numels);

// Tensors one launch carries for a kernel with this many address roles (2 to 6).
int64_t tensors_per_launch(int roles);

}  // namespace fused_optim::cuda
