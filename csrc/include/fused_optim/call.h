// What every native entry point of fused_optim._cpu and fused_optim._cuda takes, declared once:
// the per-call arguments (Call), the operation's hyperparameters by name (Hyper, unpacked into
// the operation's struct of math/<opt>.h, see args.h), and the registry through which each
// entry point makes itself known from its own source file. Adding an optimizer adds a math
// header and one source file per module; no bindings change. Plain C++ (no pybind11, no CUDA
// headers): the .cu files include it, and csrc/bindings.h binds it once for both modules.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "fused_optim/args.h"

namespace fused_optim {

// lists[k][t]: role k of tensor t, as raw addresses (the modules link no libtorch).
using AddressLists = std::vector<std::vector<uintptr_t>>;

// The fields of Call: F(type, name, default). Python builds a Call with these names as
// keywords (fused_optim._cpu.Call(lists=..., numels=...)); a module reads the ones it serves
// and leaves the others at their defaults (each says which module reads it).
#define FO_CALL_FIELDS(F)                                                                          \
  /* role k (params, grads, the states in the operation's order, then the masters or */          \
  /* remainders of MASTER/REMAINDER storage) of tensor t */                                      \
  F(AddressLists, lists, {})                                                                     \
  F(std::vector<int64_t>, numels, {})                                                            \
  /* per tensor, its step count BEFORE this step (the update uses t = step + 1) */               \
  F(std::vector<double>, steps, {})                                                              \
  /* cuda, instead of steps: per tensor, the device address of its float32 counter, read by */  \
  /* the kernels (a captured graph follows it) */                                                \
  F(std::vector<uintptr_t>, step_addresses, {})                                                  \
  /* DualAdam: the one count before this step; cuda: or a float64 device scalar's address */     \
  F(double, global_step, 0.0)                                                                    \
  F(uintptr_t, global_step_address, 0)                                                           \
  /* dtype codes (dtypes.h) of params and grads, and of the states (-1: the math dtype) */       \
  F(int, dtype, 0)                                                                               \
  F(int, state_dtype, -1)                                                                        \
  /* cpu: what every grad is divided by, in the math dtype (GradScaler's scale over the clip */  \
  /* coefficient; 1 without either) */                                                           \
  F(double, grad_divisor, 1.0)                                                                   \
  /* cuda: device addresses of GradScaler's float32 scale and inf flag (0: none) */              \
  F(uintptr_t, grad_scale, 0)                                                                    \
  F(uintptr_t, found_inf, 0)                                                                     \
  F(int, num_threads, 1) /* cpu */                                                               \
  F(int, device, 0)      /* cuda */                                                              \
  F(uintptr_t, stream, 0) /* cuda: a cudaStream_t */                                             \
  /* param storage (math/rounding.h's StorageMode); STOCHASTIC hashes the seed, each param's */  \
  /* index among all the optimizer's params (tensor_indices), its step and the element */        \
  F(int, storage_mode, 0)                                                                        \
  F(uint32_t, seed, 0)                                                                           \
  F(std::vector<uint32_t>, tensor_indices, {})                                                   \
  /* Adai on the cpu: each tensor's sum of exp_avg_sq before this step (pass 1 reads it), and */ \
  /* where the update pass stores the new sums (float64 scalars; empty: nowhere) */              \
  F(std::vector<double>, v_sums, {})                                                             \
  F(std::vector<uintptr_t>, v_sum_addresses, {})                                                 \
  /* Adai's update pass: the global mean of vhat (cpu), or its float64 device address (cuda) */  \
  F(double, vbar, 0.0)                                                                           \
  F(uintptr_t, vbar_address, 0)                                                                  \
  /* Adai's pass 1 on cuda: float64 device scratch of partials_len entries, and the result */    \
  F(uintptr_t, partials, 0)                                                                      \
  F(int64_t, partials_len, 0)                                                                    \
  F(uintptr_t, out, 0)

#define FO_CALL_FIELD_(type, name, default_value) type name = default_value;

struct Call {
  FO_CALL_FIELDS(FO_CALL_FIELD_)
  // "fused_optim._cpu.adam_step": what errors name (the module's step() sets it)
  std::string where;
};

// The hyperparameters of one call by name, as numbers (flags 0 or 1).
using Hyper = std::vector<std::pair<std::string, double>>;

// Throws std::invalid_argument (ValueError in Python) saying "<where>: <msg>".
[[noreturn]] void fail(const std::string& where, const std::string& msg);

void read_field(const std::string& where, const char* name, double value, double& out);
void read_field(const std::string& where, const char* name, double value, bool& out);
void read_field(const std::string& where, const char* name, double value, NormOrder& out);

// The field names of an operation's hyperparameter struct, in order.
template <class Args>
std::vector<std::string> field_names() {
  Args args;
  std::vector<std::string> names;
  args.fields([&](const char* name, auto&) { names.emplace_back(name); });
  return names;
}

// Args from the call's hyperparameters: every field once, nothing else.
template <class Args>
Args unpack(const std::string& where, const Hyper& hyper) {
  Args args;
  size_t used = 0;
  args.fields([&](const char* name, auto& field) {
    for (const auto& [key, value] : hyper) {
      if (key == name) {
        read_field(where, name, value, field);
        ++used;
        return;
      }
    }
    fail(where, std::string("missing hyperparameter ") + name);
  });
  if (used != hyper.size()) {
    const std::vector<std::string> names = field_names<Args>();
    for (const auto& entry : hyper) {
      bool known = false;
      for (const auto& n : names) known = known || n == entry.first;
      if (!known) fail(where, "unknown hyperparameter " + entry.first);
    }
  }
  return args;
}

// An entry point: the call and its hyperparameters in, a few numbers out (Adai's sums; most
// return none).
using EntryPoint = std::function<std::vector<double>(const Call&, const Hyper&)>;

struct Operation {
  std::vector<std::string> fields;  // the hyperparameters it takes, in order
  EntryPoint run;
};

// This module's entry points by operation name (each module links its own).
std::map<std::string, Operation>& operations();

// Registers an entry point from its own source file, at load time:
//   static const Registration<AdamStepArgs> registered("adam_step", adam_step);
template <class Args>
struct Registration {
  Registration(const char* name, std::vector<double> (*run)(const Call&, const Args&)) {
    operations()[name] = Operation{field_names<Args>(), [run](const Call& call, const Hyper& hyper) {
                                     return run(call, unpack<Args>(call.where, hyper));
                                   }};
  }
};

}  // namespace fused_optim
