// Entry points of fused_optim._cuda, one per optimizer pass; bound in bindings_cuda.cpp.
// Plain C++ types only (no CUDA headers), so the bindings compile with the host compiler.
// Each takes one param group: its address lists, element counts, the per-tensor step counts
// BEFORE this step (host values, or device addresses of float32 counters when capturable:
// exactly one of the two lists is filled), dtype codes, hyperparameters as plain numbers,
// the GradScaler scalars (device addresses, 0 when unused), the device and the stream.
// Everything checkable is checked first: bad input raises ValueError before any launch.
// param_mode (math/rounding.h's ParamMode): how bf16/fp16 params are kept: 1 with an fp32
// master, 2 with an int16 remainder (then the lists end with the masters / remainders), 3
// rounded stochastically by a hash of (seed, tensor_indices[t], the tensor's step, element);
// tensor_indices[t]: the param's place among all the optimizer's params.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fused_optim::cuda {

using AddressLists = std::vector<std::vector<uintptr_t>>;

// lists: param, grad, exp_avg, exp_avg_sq[, max_exp_avg_sq when amsgrad]
void adam_step(const AddressLists& lists, const std::vector<int64_t>& numels,
               const std::vector<double>& step_values, const std::vector<uintptr_t>& step_addresses,
               int dtype, int state_dtype, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool decoupled, bool amsgrad, bool maximize,
               uintptr_t grad_scale, uintptr_t found_inf, int device, uintptr_t stream,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// lists: param, grad, exp_avg, exp_avg_sq[, max_exp_avg_sq when amsgrad]
void adamomentum_step(const AddressLists& lists, const std::vector<int64_t>& numels,
                      const std::vector<double>& step_values,
                      const std::vector<uintptr_t>& step_addresses, int dtype, int state_dtype,
                      double lr, double beta1, double beta2, double eps, double weight_decay,
                      bool decoupled, bool amsgrad, bool rectify, uintptr_t grad_scale,
                      uintptr_t found_inf, int device, uintptr_t stream,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// lists: param, grad, exp_avg, exp_avg_sq. One global step count before this step: a host
// value, or the address of a float64 device scalar when global_step_address != 0.
void dualadam_step(const AddressLists& lists, const std::vector<int64_t>& numels, int dtype,
                   int state_dtype, double lr, double beta1, double beta2, double eps,
                   double weight_decay, double switch_rate, double global_step,
                   uintptr_t global_step_address, uintptr_t grad_scale, uintptr_t found_inf,
                   int device, uintptr_t stream,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// Adai pass 1. lists: param, grad, exp_avg_sq (read only). Writes the group's sum of the new
// vhat to the float64 device scalar at `out`; `partials` is a float64 device buffer of at
// least chunk_count(numels) entries (scratch).
void adai_vhat_sum(const AddressLists& lists, const std::vector<int64_t>& numels,
                   const std::vector<double>& step_values,
                   const std::vector<uintptr_t>& step_addresses, int dtype, int state_dtype,
                   double beta2, double weight_decay, bool decoupled, uintptr_t grad_scale,
                   uintptr_t partials, int64_t partials_len, uintptr_t out, int device,
                   uintptr_t stream,
               int param_mode = 0, const std::vector<uint32_t>& tensor_indices = {});

// Adai pass 1 when max_grad_norm clips the grads (reference: adai_clip_sums). lists: param,
// grad, exp_avg_sq (read only). Writes {norm part, c0, c1, c2} to the 4 float64 device values
// at `out`: the group's part of the grad norm of order norm_type and its sum of vhat as
// c0 + c1 c + c2 c^2 in the clip coefficient c; `partials`: float64 scratch of at least
// 4 x chunk_count(numels) entries.
void adai_clip_sums(const AddressLists& lists, const std::vector<int64_t>& numels,
                    const std::vector<double>& step_values,
                    const std::vector<uintptr_t>& step_addresses, int dtype, int state_dtype,
                    double beta2, double weight_decay, bool decoupled, double norm_type,
                    uintptr_t grad_scale, uintptr_t partials, int64_t partials_len, uintptr_t out,
                    int device, uintptr_t stream,
               int param_mode = 0, const std::vector<uint32_t>& tensor_indices = {});

// Adai pass 2. lists: param, grad, exp_avg, exp_avg_sq, beta1_prod. vbar: address of the
// float64 device scalar holding the global mean of vhat (never copied to the host).
void adai_update(const AddressLists& lists, const std::vector<int64_t>& numels,
                 const std::vector<double>& step_values,
                 const std::vector<uintptr_t>& step_addresses, int dtype, int state_dtype,
                 double lr, double beta0, double beta2, double eps, double weight_decay,
                 bool decoupled, uintptr_t vbar, uintptr_t grad_scale, uintptr_t found_inf,
                 int device, uintptr_t stream,
               int param_mode = 0, uint32_t seed = 0, const std::vector<uint32_t>& tensor_indices = {});

// Number of chunks (blocks, Adai partial sums) of a list.
int64_t chunk_count(const std::vector<int64_t>& numels);

// Tensors one launch carries for a kernel with this many address roles (2 to 5).
int64_t tensors_per_launch(int roles);

}  // namespace fused_optim::cuda
