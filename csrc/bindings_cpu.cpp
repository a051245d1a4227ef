// pybind11 module fused_optim._cpu: raw addresses in, no libtorch. Argument errors surface as
// ValueError before any memory is touched. The GIL is released around the loops so other
// Python threads (data loaders) keep running during a step.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/ops.h"

namespace py = pybind11;
using namespace fused_optim::cpu;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fused_optim CPU kernels: multi-tensor optimizer steps over raw addresses";
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::invalid_argument& err) {
      PyErr_SetString(PyExc_ValueError, err.what());
    }
  });
  const auto release = py::call_guard<py::gil_scoped_release>();

  m.def("adam_step", &adam_step, release, py::arg("lists"), py::arg("numels"), py::arg("steps"),
        py::arg("dtype"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("amsgrad"), py::arg("maximize"),
        py::arg("num_threads"),
        py::arg("grad_divisor") = 1.0, py::arg("param_mode") = 0,
        py::arg("seed") = 0u, py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("adai_vhat_sum", &adai_vhat_sum, release, py::arg("lists"), py::arg("numels"),
        py::arg("steps"), py::arg("v_sums"), py::arg("dtype"), py::arg("beta2"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("num_threads"),
        py::arg("grad_divisor") = 1.0, py::arg("param_mode") = 0,
        py::arg("seed") = 0u, py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("adai_clip_sums", &adai_clip_sums, release, py::arg("lists"), py::arg("numels"),
        py::arg("steps"), py::arg("v_sums"), py::arg("dtype"), py::arg("beta2"),
        py::arg("weight_decay"), py::arg("decoupled"), py::arg("norm_type"), py::arg("num_threads"),
        py::arg("grad_divisor") = 1.0, py::arg("param_mode") = 0,
        py::arg("seed") = 0u, py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("advance_counters", &advance_counters, release, py::arg("addresses"));
  m.def("tensor_sums", &tensor_sums, release, py::arg("lists"), py::arg("numels"),
        py::arg("dtype"), py::arg("num_threads"));
  m.def("adai_update", &adai_update, release, py::arg("lists"), py::arg("numels"),
        py::arg("steps"), py::arg("dtype"), py::arg("lr"), py::arg("beta0"), py::arg("beta2"),
        py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("vbar"),
        py::arg("num_threads"),
        py::arg("grad_divisor") = 1.0, py::arg("param_mode") = 0,
        py::arg("seed") = 0u, py::arg("tensor_indices") = std::vector<uint32_t>{},
        py::arg("v_sum_addresses") = std::vector<uintptr_t>{});
  m.def("adamomentum_step", &adamomentum_step, release, py::arg("lists"), py::arg("numels"),
        py::arg("steps"), py::arg("dtype"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("amsgrad"),
        py::arg("rectify"), py::arg("num_threads"),
        py::arg("grad_divisor") = 1.0, py::arg("param_mode") = 0,
        py::arg("seed") = 0u, py::arg("tensor_indices") = std::vector<uint32_t>{});
  m.def("dualadam_step", &dualadam_step, release, py::arg("lists"), py::arg("numels"),
        py::arg("dtype"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("global_step"), py::arg("alpha"), py::arg("blend"),
        py::arg("num_threads"),
        py::arg("grad_divisor") = 1.0, py::arg("param_mode") = 0,
        py::arg("seed") = 0u, py::arg("tensor_indices") = std::vector<uint32_t>{});
}
