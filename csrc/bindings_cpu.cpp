// pybind11 module fused_optim._cpu: raw addresses in, no libtorch. The operations register
// themselves (csrc/cpu/<opt>.cpp) and run through the shared step() of bindings.h; argument
// errors surface as ValueError before any memory is touched.
#include "bindings.h"
#include "cpu/driver.h"
#include "cpu/prefetch.h"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fused_optim CPU kernels: multi-tensor optimizer steps over raw addresses";
  fused_optim::python::bind_common(m, "fused_optim._cpu");
  m.attr("device_type") = "cpu";
  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("advance_counters", &fused_optim::cpu::advance_counters, release, py::arg("addresses"));
  m.def("threads_for", &fused_optim::cpu::threads_for, py::arg("bytes"), py::arg("num_threads"),
        py::arg("bytes_per_thread"),
        "The threads a call whose tensors hold `bytes` bytes runs on, of num_threads (csrc/cpu/driver.h).");
  m.def("call_bytes", [](const fused_optim::Call& call) {
    int64_t elements = 0;
    for (int64_t n : call.numels) elements += n;
    return elements * fused_optim::cpu::call_bytes_per_element(call);
  }, py::arg("call"), "The bytes of a checked call's tensors, what threads_for is given.");
  m.def("elementwise_units", [](const std::vector<int64_t>& numels, int threads) {
    const auto plan = fused_optim::cpu::plan_elementwise(numels, threads);
    return std::make_pair(plan.unit, plan.total());
  }, py::arg("numels"), py::arg("threads"),
        "(elements per unit, units) of a one-pass call over tensors of these sizes on `threads` threads.");
  m.def("bytes_per_thread", &fused_optim::cpu::bytes_per_thread,
        "The bytes per thread calls use now: the busy setting while the machine is marked busy.");
  m.def("set_bytes_per_thread", &fused_optim::cpu::set_bytes_per_thread, py::arg("quiet"), py::arg("busy"),
        "The bytes per thread on a quiet machine and on a busy one (both >= 1; equal: no adaptation).");
  m.def("quiet_bytes_per_thread", &fused_optim::cpu::quiet_bytes_per_thread);
  m.def("busy_bytes_per_thread", &fused_optim::cpu::busy_bytes_per_thread);
  m.def("machine_busy", &fused_optim::cpu::machine_busy,
        "Whether a recent parallel region waited for a worker (the busy setting applies).");
  m.def("note_worker_wait", &fused_optim::cpu::note_worker_wait, py::arg("wait_ns"),
        "Records how long a region's caller waited for its workers at the end: over 1 ms marks the "
        "machine busy for 2 s, less marks it quiet.");
  m.attr("default_quiet_bytes_per_thread") = fused_optim::cpu::kQuietBytesPerThread;
  m.attr("default_busy_bytes_per_thread") = fused_optim::cpu::kBusyBytesPerThread;
  m.def("prefetch_distance", &fused_optim::cpu::prefetch_distance,
        "How many elements ahead the update loops prefetch their streams (0: no prefetches).");
  m.def("set_prefetch_distance", &fused_optim::cpu::set_prefetch_distance, py::arg("elements"),
        "Sets it for the process: a multiple of 64 in [0, 65536]. Results do not depend on it.");
  m.attr("default_prefetch_distance") = fused_optim::cpu::kDefaultPrefetchDistance;
  m.def("tensor_sums", &fused_optim::cpu::tensor_sums, release, py::arg("lists"), py::arg("numels"),
        py::arg("dtype"), py::arg("num_threads"));
}
