// Entry points of fused_optim._cpu, one per optimizer pass; bound in bindings_cpu.cpp.
// Each takes one param group: its address lists, element counts, per-tensor steps, the
// parameter dtype code and the group's hyperparameters as plain numbers. grad_divisor: every
// grad is divided by it in the math dtype (GradScaler's scale over the clip coefficient).
// param_mode (math/rounding.h's ParamMode): how bf16/fp16 params are kept: 1 with an fp32
// master, 2 with an int16 remainder (then the lists end with the masters / remainders), 3
// rounded stochastically by a hash of (seed, tensor_indices[t], the tensor's step, element index)
// (math::stochastic_key: tensor_indices[t] is the param's place among all the optimizer's params).
#pragma once
#include <cstdint>
#include <vector>

#include "driver.h"

namespace fused_optim::cpu {

// lists: param, grad, exp_avg, exp_avg_sq[, max_exp_avg_sq when amsgrad]
void adam_step(const AddressLists& lists, const std::vector<int64_t>& numels,
               const std::vector<double>& steps, int dtype, double lr, double beta1, double beta2,
               double eps, double weight_decay, bool decoupled, bool amsgrad, bool maximize,
               int num_threads, double grad_divisor,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// Adai pass 1. lists: param, grad. v_sums: each tensor's sum of exp_avg_sq before this step
// (returned by the previous adai_update, or tensor_sums). Returns the group's sum of vhat.
double adai_vhat_sum(const AddressLists& lists, const std::vector<int64_t>& numels,
                     const std::vector<double>& steps, const std::vector<double>& v_sums,
                     int dtype, double beta2, double weight_decay, bool decoupled,
                     int num_threads, double grad_divisor,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// Adai pass 2. lists: param, grad, exp_avg, exp_avg_sq, beta1_prod. Returns each tensor's
// sum of the new exp_avg_sq, the v_sums of the next step, and stores them at v_sum_addresses
// too when that is not empty (one double per tensor: the optimizer's exp_avg_sq_sum states).
std::vector<double> adai_update(const AddressLists& lists, const std::vector<int64_t>& numels,
                                const std::vector<double>& steps, int dtype, double lr,
                                double beta0, double beta2, double eps, double weight_decay,
                                bool decoupled, double vbar, int num_threads,
                                double grad_divisor,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {},
               const std::vector<uintptr_t>& v_sum_addresses = {});

// Adai pass 1 when max_grad_norm clips the grads (reference: adai_clip_sums). lists: param,
// grad; v_sums as for adai_vhat_sum. Returns {norm part, c0, c1, c2}: the group's part of the
// grad norm of order norm_type and its sum of vhat as c0 + c1 c + c2 c^2 in the clip
// coefficient c (math/clip.h).
std::vector<double> adai_clip_sums(const AddressLists& lists, const std::vector<int64_t>& numels,
                                   const std::vector<double>& steps,
                                   const std::vector<double>& v_sums, int dtype, double beta2,
                                   double weight_decay, bool decoupled, double norm_type,
                                   int num_threads, double grad_divisor,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// Deterministic fp64 sum of each tensor of a list (float32 or float64 states).
std::vector<double> tensor_sums(const AddressLists& lists, const std::vector<int64_t>& numels,
                                int dtype, int num_threads);

// lists: param, grad, exp_avg, exp_avg_sq[, max_exp_avg_sq when amsgrad]
void adamomentum_step(const AddressLists& lists, const std::vector<int64_t>& numels,
                      const std::vector<double>& steps, int dtype, double lr, double beta1,
                      double beta2, double eps, double weight_decay, bool decoupled, bool amsgrad,
                      bool rectify, int num_threads, double grad_divisor,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// lists: param, grad, exp_avg, exp_avg_sq. One global step; alpha and blend come from the
// host's fp64 predicate (reference: dualadam_blend_weight).
void dualadam_step(const AddressLists& lists, const std::vector<int64_t>& numels, int dtype,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   double global_step, double alpha, bool blend, int num_threads,
                   double grad_divisor,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// Adds 1 to each float32 step counter (0-dim CPU tensors) at the given addresses.
void advance_counters(const std::vector<uintptr_t>& addresses);

}  // namespace fused_optim::cpu
