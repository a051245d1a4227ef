// The host-side argument checks both native modules share (csrc/host/checks.cpp, linked into
// each): everything an entry point can check is checked before it reads or writes memory or
// launches anything, and a failure is std::invalid_argument (ValueError in Python) naming the
// module and operation (call.where, "fused_optim._cpu.adam_step").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fused_optim/call.h"
#include "fused_optim/dtypes.h"

namespace fused_optim {

DType parse_dtype(const std::string& where, int code);
// The state dtype of a call: its code, -1 for the math dtype (float64 for float64 params,
// float32 otherwise); bfloat16 states for non-float64 params where bf16_states.
DType parse_state_dtype(const std::string& where, DType param, int code, bool bf16_states);
void check_per_tensor(const std::string& where, const char* what, size_t got, size_t ntensors);
// lists[k][t] for role k of role_dtypes; zero-size tensors may have any address. The roles in
// `unread` (a state the call's flags leave out, as max_exp_avg_sq without amsgrad) may be
// absent (an empty list) or given, and are not looked at further.
void check_lists(const std::string& where, const AddressLists& lists, const std::vector<DType>& role_dtypes,
                 const std::vector<int64_t>& numels, const std::vector<size_t>& unread = {});
void check_threads(const std::string& where, int num_threads);
// One step count per tensor: host values (steps), or where device_counters the addresses of
// float32 device counters (step_addresses) instead; counts are finite and >= 0.
void check_steps(const Call& call, bool device_counters);
// DualAdam's one step count: finite and >= 0, or where device_counter the address of a
// float64 device scalar.
void check_global_step(const Call& call, bool device_counter);
// A device scalar's address: aligned to `size`; 0 allowed only when not `required`.
void check_scalar(const std::string& where, const char* what, uintptr_t address, int64_t size, bool required);

// Checks the call's param storage against the param dtype (MASTER: bf16/fp16; REMAINDER and
// STOCHASTIC: bf16) and, for STOCHASTIC, its tensor indices (one per tensor); in the MASTER and
// REMAINDER modes the call's lists end with the masters / remainders, whose dtype is appended
// to `roles` for check_lists (float32, or 2-byte elements for the int16 remainders).
void check_storage(const Call& call, DType param, std::vector<DType>& roles);

}  // namespace fused_optim
