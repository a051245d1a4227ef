// pybind11 module fused_optim._cpu: raw addresses in, no libtorch. The operations register
// themselves (csrc/cpu/<opt>.cpp) and run through the shared step() of bindings.h; argument
// errors surface as ValueError before any memory is touched.
#include "bindings.h"
#include "cpu/driver.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fused_optim CPU kernels: multi-tensor optimizer steps over raw addresses";
  fused_optim::python::bind_common(m, "fused_optim._cpu");
  m.attr("device_type") = "cpu";
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("advance_counters", &fused_optim::cpu::advance_counters, release, py::arg("addresses"));
  m.def("tensor_sums", &fused_optim::cpu::tensor_sums, release, py::arg("lists"), py::arg("numels"),
        py::arg("dtype"), py::arg("num_threads"));
}
