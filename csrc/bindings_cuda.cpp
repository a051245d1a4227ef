// pybind11 module fused_optim._cuda: raw device addresses and a stream handle in, no libtorch,
// CUDA runtime linked statically. Importing touches no driver, so the module imports on a
// machine without a GPU; a step there raises RuntimeError. Argument errors surface as
// ValueError before anything is launched. The GIL is released around the launches.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>
#include <vector>

#include "cuda/ops.h"
#include "fused_optim/chunking.h"

#ifndef FO_CUDA_ARCHS
#error "setup.py defines FO_CUDA_ARCHS, the ';'-separated list of compiled archs"
#endif

namespace py = pybind11;
using namespace fused_optim::cuda;

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
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::invalid_argument& err) {
      PyErr_SetString(PyExc_ValueError, err.what());
    }
  });
  const auto release = py::call_guard<py::gil_scoped_release>();

  m.def("compiled_archs", &compiled_archs);
  m.attr("archs") = compiled_archs();
  m.def("chunk_count", &chunk_count, py::arg("numels"));
  m.def("tensors_per_launch", &tensors_per_launch, py::arg("roles"));
  // the kernels' vector/masked choice per role, exposed so tests check it without a GPU
  m.def("aligned_for_pack", &fused_optim::aligned_for_pack, py::arg("address"), py::arg("begin"),
        py::arg("elem_size"), py::arg("pack"));

  m.def("adam_step", &adam_step, release, py::arg("lists"), py::arg("numels"),
        py::arg("step_values"), py::arg("step_addresses"), py::arg("dtype"),
        py::arg("state_dtype"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("amsgrad"),
        py::arg("maximize"), py::arg("grad_scale"), py::arg("found_inf"), py::arg("device"),
        py::arg("stream"),
        py::arg("param_mode") = 0, py::arg("seed") = 0u,
        py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("adamomentum_step", &adamomentum_step, release, py::arg("lists"), py::arg("numels"),
        py::arg("step_values"), py::arg("step_addresses"), py::arg("dtype"),
        py::arg("state_dtype"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("amsgrad"),
        py::arg("rectify"), py::arg("grad_scale"), py::arg("found_inf"), py::arg("device"),
        py::arg("stream"),
        py::arg("param_mode") = 0, py::arg("seed") = 0u,
        py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("dualadam_step", &dualadam_step, release, py::arg("lists"), py::arg("numels"),
        py::arg("dtype"), py::arg("state_dtype"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("switch_rate"),
        py::arg("global_step"), py::arg("global_step_address"), py::arg("grad_scale"),
        py::arg("found_inf"), py::arg("device"), py::arg("stream"),
        py::arg("param_mode") = 0, py::arg("seed") = 0u,
        py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("adai_vhat_sum", &adai_vhat_sum, release, py::arg("lists"), py::arg("numels"),
        py::arg("step_values"), py::arg("step_addresses"), py::arg("dtype"),
        py::arg("state_dtype"), py::arg("beta2"), py::arg("weight_decay"), py::arg("decoupled"),
        py::arg("grad_scale"), py::arg("partials"), py::arg("partials_len"), py::arg("out"),
        py::arg("device"), py::arg("stream"),
        py::arg("param_mode") = 0, py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("adai_clip_sums", &adai_clip_sums, release, py::arg("lists"), py::arg("numels"),
        py::arg("step_values"), py::arg("step_addresses"), py::arg("dtype"),
        py::arg("state_dtype"), py::arg("beta2"), py::arg("weight_decay"), py::arg("decoupled"),
        py::arg("norm_type"), py::arg("grad_scale"), py::arg("partials"), py::arg("partials_len"),
        py::arg("out"), py::arg("device"), py::arg("stream"),
        py::arg("param_mode") = 0, py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("adai_update", &adai_update, release, py::arg("lists"), py::arg("numels"),
        py::arg("step_values"), py::arg("step_addresses"), py::arg("dtype"),
        py::arg("state_dtype"), py::arg("lr"), py::arg("beta0"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("vbar"), py::arg("grad_scale"),
        py::arg("found_inf"), py::arg("device"), py::arg("stream"),
        py::arg("param_mode") = 0, py::arg("seed") = 0u,
        py::arg("tensor_indices") = std::vector<uint32_t>{});
}
