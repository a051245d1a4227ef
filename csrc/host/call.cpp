// call.h's out-of-line part, linked into both native modules: the error, the field readers of
// unpack, and the module's registry of entry points.
#include "fused_optim/call.h"

#include <cmath>
#include <stdexcept>

namespace fused_optim {

void fail(const std::string& where, const std::string& msg) { throw std::invalid_argument(where + ": " + msg); }

void read_field(const std::string& where, const char* name, double value, double& out) {
  // NaN or inf in a hyperparameter would silently poison every element
  if (!std::isfinite(value)) fail(where, std::string(name) + " is not finite");
  out = value;
}

void read_field(const std::string& where, const char* name, double value, bool& out) {
  if (value != 0.0 && value != 1.0)
    fail(where, std::string(name) + " is a flag (0 or 1), got " + std::to_string(value));
  out = value != 0.0;
}

void read_field(const std::string& where, const char* name, double value, NormOrder& out) {
  if (!(value > 0.0 || value == -INFINITY)) fail(where, std::string(name) + " must be > 0 or +-inf");
  out.q = value;
}

// A plain function's static (not an inline function's, which GCC may make one object for the
// whole process): each module keeps its own entry points.
std::map<std::string, Operation>& operations() {
  static std::map<std::string, Operation> registered;
  return registered;
}

}  // namespace fused_optim
