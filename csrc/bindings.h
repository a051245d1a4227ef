// What both native modules bind alike (bindings_cpu.cpp, bindings_cuda.cpp): the error
// translation, the Call of fused_optim/call.h with every field a keyword, and the generic
// entry points over the module's registry of operations:
//   step(name, call, hyper) -> list[float]   run one operation (hyper: {name: number})
//   step_planned(name, call, role, addresses, step_addresses, global_step, num_threads,
//                grad_divisor, hyper)
//                                          the same on a Call kept between steps
//   operations() -> {name: [hyperparameter names]}
//   storage_modes() -> {"PLAIN": 0, ...}, dtype_codes() -> {"float32": 0, ...}
// The GIL is released while an operation runs, so other Python threads (data loaders) keep
// running during a step.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fused_optim/call.h"
#include "fused_optim/counters.h"
#include "fused_optim/dtypes.h"
#include "fused_optim/math/rounding.h"

namespace fused_optim::python {

namespace py = pybind11;

// The call's hyperparameters as numbers (bools are 0/1; unpack checks names and values).
inline Hyper hyperparameters(const std::string& where, const py::dict& values) {
  Hyper hyper;
  hyper.reserve(values.size());
  for (const auto& item : values) {
    const std::string name = py::str(item.first);
    const double value = PyFloat_AsDouble(item.second.ptr());
    if (value == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      fail(where, "hyperparameter " + name + " is not a number");
    }
    hyper.emplace_back(name, value);
  }
  return hyper;
}

#define FO_CALL_SETTER_(type, name, default_value) \
  {#name, [](Call& call, py::handle value) { call.name = value.cast<type>(); }},
#define FO_CALL_ATTRIBUTE_(type, name, default_value) cls.def_readwrite(#name, &Call::name);

// A Call from keywords: each given one converted to its field's type (TypeError when it does
// not convert or names no field), the others left at their defaults. Only the given keywords
// are looked at: a step's host time matters for models of many small tensors.
inline Call call_from_keywords(const py::kwargs& keywords) {
  using Setter = void (*)(Call&, py::handle);
  static const std::unordered_map<std::string_view, Setter> setters{FO_CALL_FIELDS(FO_CALL_SETTER_)};
  Call call;
  for (const auto& [key, value] : keywords) {
    Py_ssize_t size = 0;
    const char* name = PyUnicode_AsUTF8AndSize(key.ptr(), &size);
    if (name == nullptr) throw py::error_already_set();
    const auto found = setters.find(std::string_view(name, size_t(size)));
    if (found == setters.end())
      throw py::type_error("Call() got an unexpected keyword argument '" + std::string(name, size_t(size)) + "'");
    found->second(call, value);
  }
  return call;
}

// Binds the shared part into module m, whose name ("fused_optim._cpu") prefixes its errors.
inline void bind_common(py::module_& m, const std::string& module_name) {
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const std::invalid_argument& err) {
      PyErr_SetString(PyExc_ValueError, err.what());
    }
  });

  // module_local: each module binds its own Call (pybind11 would otherwise share one type
  // registration between fused_optim._cpu and fused_optim._cuda)
  py::class_<Call> cls(m, "Call", py::module_local(),
                       "The per-call arguments of every operation (csrc/include/fused_optim/call.h), "
                       "given as keywords; the fields a call does not give keep their defaults.");
  cls.def(py::init(&call_from_keywords));
  FO_CALL_FIELDS(FO_CALL_ATTRIBUTE_)

  m.def(
      "step",
      [module_name](const std::string& name, Call& call, const py::dict& hyper) {
        const auto& registered = operations();
        const auto found = registered.find(name);
        if (found == registered.end())
          fail(module_name + ".step", "no operation " + name + " in this module (operations() lists them)");
        call.where = module_name + "." + name;
        const Hyper values = hyperparameters(call.where, hyper);
        const py::gil_scoped_release release;
        return found->second.run(call, values);
      },
      py::arg("name"), py::arg("call"), py::arg("hyper"),
      "Runs operation `name` on a Call with its hyperparameters {name: number}; returns what it "
      "computes (Adai's sums), else an empty list.");
  m.def(
      "step_planned",
      [module_name](const std::string& name, Call& call, size_t role, const std::vector<uintptr_t>& addresses,
                    const std::vector<uintptr_t>& step_addresses, double global_step, int num_threads,
                    double grad_divisor, const py::dict& hyper) {
        const auto& registered = operations();
        const auto found = registered.find(name);
        if (found == registered.end())
          fail(module_name + ".step_planned", "no operation " + name + " in this module (operations() lists them)");
        call.where = module_name + "." + name;
        if (role >= call.lists.size() || addresses.size() != call.lists[role].size())
          fail(call.where, "the new address list does not replace one of the call's lists");
        const Hyper values = hyperparameters(call.where, hyper);
        call.lists[role] = addresses;
        call.steps = read_counters(call.where, step_addresses);
        call.global_step = global_step;
        call.num_threads = num_threads;
        call.grad_divisor = grad_divisor;
        const py::gil_scoped_release release;
        return found->second.run(call, values);
      },
      py::arg("name"), py::arg("call"), py::arg("role"), py::arg("addresses"), py::arg("step_addresses"),
      py::arg("global_step"), py::arg("num_threads"), py::arg("grad_divisor"), py::arg("hyper"),
      "step() on a Call kept from an earlier step (a step plan's), with what changes between steps: "
      "list `role`'s addresses (the grads'), the per-tensor counts read from the step counters at "
      "step_addresses (none for an operation with a global step) and the global step, the thread "
      "count and the grad divisor. Every other field is the kept call's.");
  m.def(
      "read_counters",
      [module_name](const std::vector<uintptr_t>& addresses) {
        return read_counters(module_name + ".read_counters", addresses);
      },
      py::arg("addresses"),
      "The counts of 0-dim float32 step counters in host memory, by address (counters.h).");
  m.def(
      "read_sums",
      [module_name](const std::vector<uintptr_t>& addresses) {
        return read_sums(module_name + ".read_sums", addresses);
      },
      py::arg("addresses"), "The values of 0-dim float64 tensors in host memory, by address (counters.h).");
  m.def(
      "operations",
      []() {
        py::dict out;
        for (const auto& [name, op] : operations()) out[py::str(name)] = op.fields;
        return out;
      },
      "{operation name: [its hyperparameters, in order]} of this module's entry points.");
  m.def(
      "storage_modes",
      []() {
        py::dict out;
        out["PLAIN"] = int(math::kPlainStorage);
        out["MASTER"] = int(math::kMasterStorage);
        out["REMAINDER"] = int(math::kRemainderStorage);
        out["STOCHASTIC"] = int(math::kStochasticStorage);
        return out;
      },
      "The param storage codes (math/rounding.h), as fused_optim._param_storage names them.");
  m.def(
      "dtype_codes",
      []() {
        py::dict out;
        for (DType d : {DType::kFloat32, DType::kFloat64, DType::kBFloat16, DType::kFloat16})
          out[dtype_name(d)] = int(d);
        return out;
      },
      "The dtype codes (fused_optim/dtypes.h) by torch dtype name.");
}

}  // namespace fused_optim::python
