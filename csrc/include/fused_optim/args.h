// How an operation declares its hyperparameters once (in its math/<opt>.h): a field list
//
//   #define FO_LION_STEP_ARGS(F) F(double, lr) F(double, beta1) F(double, beta2) F(double, weight_decay)
//   FO_DECLARE_ARGS(LionStepArgs, FO_LION_STEP_ARGS)
//
// makes a plain struct with those fields and a fields(visit) member that calls
// visit("lr", lr), ... in declaration order. From it the native modules unpack the Python
// dict {name: number} of a call (call.h's unpack, one function for every operation) and list
// each operation's field names (operations()); the names and their order are the keyword
// hyperparameters of the operation's declaration in fused_optim/operations.py.
// Field types: double (finite), bool (0 or 1), NormOrder (a norm's order, may be infinite).
#pragma once

namespace fused_optim {

// The order q of a grad norm: > 0, +inf (max |g|) or -inf (min |g|).
struct NormOrder {
  double q;
};

}  // namespace fused_optim

#define FO_ARGS_FIELD_(type, name) type name{};
#define FO_ARGS_VISIT_(type, name) visit(#name, name);

#define FO_DECLARE_ARGS(NAME, FIELDS)                    \
  struct NAME {                                          \
    FIELDS(FO_ARGS_FIELD_)                               \
    template <class Visit>                               \
    void fields(Visit&& visit) { FIELDS(FO_ARGS_VISIT_) } \
  };
