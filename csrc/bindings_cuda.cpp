// pybind11 module fused_optim._cuda: raw device addresses and a stream handle in, no libtorch,
// CUDA runtime linked statically. Importing touches no driver, so the module imports on a
// machine without a GPU; a step there raises RuntimeError. The operations register themselves
// (csrc/cuda/<opt>.cu) and run through the shared step() of bindings.h; argument errors
// surface as ValueError before anything is launched.
#include <sstream>
#include <string>
#include <vector>

#include "bindings.h"
#include "cuda/launches.h"
#include "fused_optim/chunking.h"

#ifndef FO_CUDA_ARCHS
#error "setup.py defines FO_CUDA_ARCHS, the ';'-separated list of compiled archs"
#endif

namespace py = pybind11;

namespace {

// The archs the kernels were compiled for: sm_XX (machine code) and compute_XX (PTX, which
// the driver compiles for newer GPUs).
std::vector<std::string> compiled_archs() {
  std::vector<std::string> archs;
  std::stringstream list(FO_CUDA_ARCHS);
  for (std::string arch; std::getline(list, arch, ';');)
    if (!arch.empty()) archs.push_back(arch);
  return archs;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fused_optim CUDA kernels: multi-tensor optimizer steps over raw device addresses";
  fused_optim::python::bind_common(m, "fused_optim._cuda");
#ifdef FO_CUDA_EMULATION
  // the kernels compiled as host code (tests/cuda_emulation): they update host memory
  m.attr("device_type") = "cpu";
#else
  m.attr("device_type") = "cuda";
#endif
  m.def("compiled_archs", &compiled_archs);
  m.attr("archs") = compiled_archs();
  m.def("chunk_count", &fused_optim::cuda::chunk_count, py::arg("numels"));
  m.def("tensors_per_launch", &fused_optim::cuda::tensors_per_launch, py::arg("roles"));
  // the kernels' vector/masked choice per role, exposed so tests check it without a GPU
  m.def("aligned_for_pack", &fused_optim::aligned_for_pack, py::arg("address"), py::arg("begin"),
        py::arg("elem_size"), py::arg("pack"));
}
