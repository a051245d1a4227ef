// Param storage: how a bf16/fp16 param is kept without lost updates (fused_optim/optimizers/
// _mixed_precision.py is the reference, bit for bit): an fp32 master copy, bf16 + a 16-bit
// remainder that make up the master's bits, or stochastic rounding. The kernels load the
// master value of element i, run the update on it, and store it back through these functions.
#pragma once
#include <cstdint>

#include "fused_optim/dtypes.h"
#include "fused_optim/platform.h"

namespace fused_optim::math {

// Param storage: how the param of an element is kept. The codes are the ones of
// fused_optim/_param_storage.py (PLAIN, MASTER, REMAINDER, STOCHASTIC); both native modules
// expose these (storage_modes()) and a test compares the two tables.
enum StorageMode : int { kPlainStorage = 0, kMasterStorage = 1, kRemainderStorage = 2, kStochasticStorage = 3,
                         kStorageModes = 4 };

// PCG's output permutation as a 32-bit hash (Jarzynski and Olano, "Hash Functions for GPU
// Rendering", 2020); reference: _param_storage.pcg.
FO_HOST_DEVICE FO_INLINE uint32_t pcg_hash(uint32_t x) {
  const uint32_t state = x * 747796405u + 2891336453u;
  const uint32_t word = ((state >> ((state >> 28) + 4u)) ^ state) * 277803737u;
  return (word >> 22) ^ word;
}

// The bf16 bits of x with `increment` (0..65535) added to the magnitude before the low 16 bits
// are dropped: 0x8000 rounds to nearest with ties away from zero, a uniform random increment
// rounds stochastically; a NaN becomes a quiet NaN of its sign. Reference: _round_bits.
FO_HOST_DEVICE FO_INLINE uint16_t bf16_round_bits(float x, uint32_t increment) {
  const uint32_t bits = float_as_bits(x);
  const uint32_t sign = bits & 0x80000000u, magnitude = bits & 0x7FFFFFFFu;
  const uint32_t rounded = ((magnitude + increment) >> 16) | (sign >> 16);
  return uint16_t(magnitude > 0x7F800000u ? ((sign >> 16) | 0x7FC0u) : rounded);
}

// The master of a bf16 param and its remainder: their bits concatenated (reference: join).
FO_HOST_DEVICE FO_INLINE float bf16_join(bf16_bits param, int16_t remainder) {
  return bits_as_float((uint32_t(param.x) << 16) + uint32_t(int32_t(remainder)));
}

// Splits a master into its bf16 param (to nearest, ties away from zero) and the remainder
// master - param in [-2^15, 2^15), 0 for NaN (reference: split).
FO_HOST_DEVICE FO_INLINE void bf16_split(float master, bf16_bits& param, int16_t& remainder) {
  const uint32_t bits = float_as_bits(master);
  param.x = bf16_round_bits(master, 0x8000u);
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  remainder = nan ? int16_t(0) : int16_t(int32_t(bits - (uint32_t(param.x) << 16)));
}

// A param's value rounded from its master: bf16 to nearest with ties away from zero (what a
// remainder can hold), fp16 with torch's cast (to nearest even). Reference: round_nearest.
FO_HOST_DEVICE FO_INLINE void store_from_master(bf16_bits& param, float master) {
  param.x = bf16_round_bits(master, 0x8000u);
}
FO_HOST_DEVICE FO_INLINE void store_from_master(fp16_bits& param, float master) { store_value(param, master); }
// (fp32/fp64 params keep no master; these exist so that templates compile for every type)
FO_HOST_DEVICE FO_INLINE void store_from_master(float& param, float master) { param = master; }
FO_HOST_DEVICE FO_INLINE void store_from_master(double& param, double master) { param = master; }

// The stochastic-rounding key of one tensor and step (reference: random_increments):
// hash(hash(seed ^ tensor * golden ratio) ^ step), then per element
// hash(hash(key ^ (index >> 32)) ^ (index & 0xFFFFFFFF)) >> 16 is its random increment.
FO_HOST_DEVICE FO_INLINE uint32_t stochastic_key(uint32_t seed, uint32_t tensor_index, uint32_t step) {
  return pcg_hash(pcg_hash(seed ^ (tensor_index * 0x9E3779B9u)) ^ step);
}

FO_HOST_DEVICE FO_INLINE uint32_t stochastic_increment(uint32_t high_key, int64_t index) {
  return pcg_hash(high_key ^ uint32_t(uint64_t(index) & 0xFFFFFFFFu)) >> 16;
}

FO_HOST_DEVICE FO_INLINE uint32_t stochastic_high_key(uint32_t key, int64_t index) {
  return pcg_hash(key ^ uint32_t(uint64_t(index) >> 32));
}

}  // namespace fused_optim::math
