// Element types the kernels serve, their codes on the Python boundary, and the conversions
// between storage types and the fp32/fp64 registers the math runs in.
#pragma once
#include <cstdint>
#include <cstring>

#include "fused_optim/platform.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace fused_optim {

// Codes passed from Python (fused_optim/dtypes.py NATIVE_CODES holds the same table; both
// modules expose this one as dtype_codes(), and a test compares the two).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "unknown";
}

inline int64_t dtype_size(DType d) {
  switch (d) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kBFloat16: return 2;
    case DType::kFloat16: return 2;
  }
  return 0;
}

// Storage wrappers for the 16-bit types: plain bit containers, so host code needs no
// compiler support for bf16/fp16 arithmetic (all arithmetic happens after conversion).
struct bf16_bits { uint16_t x; };
struct fp16_bits { uint16_t x; };

FO_HOST_DEVICE FO_INLINE uint32_t float_as_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}
FO_HOST_DEVICE FO_INLINE float bits_as_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// bf16 <-> fp32, rounding to nearest even, NaN kept quiet: the rounding torch (c10::BFloat16)
// applies, so a bf16 result equals torch's cast of the same fp32 value.
FO_HOST_DEVICE FO_INLINE float load_value(bf16_bits b) { return bits_as_float(uint32_t(b.x) << 16); }
FO_HOST_DEVICE FO_INLINE void store_value(bf16_bits& b, float f) {
  uint32_t u = float_as_bits(f);
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  b.x = uint16_t(is_nan ? ((u >> 16) | 0x40u) : rounded);
}

// fp16 <-> fp32 with integer bit operations and selects, rounding to nearest even as torch
// does: branch-free, so the CPU loops vectorize (GCC 12 leaves _Float16 conversions scalar),
// and independent of the denormals-are-zero mode (subnormals go through integer math).
FO_HOST_DEVICE FO_INLINE float load_value(fp16_bits h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h.x));
#else
  const uint32_t x = h.x;
  const uint32_t sign = (x & 0x8000u) << 16;
  const uint32_t exponent = (x >> 10) & 0x1fu;
  const uint32_t mantissa = x & 0x3ffu;
  const uint32_t normal = sign | ((exponent + (127u - 15u)) << 23) | (mantissa << 13);
  const uint32_t inf_or_nan = sign | 0x7f800000u | (mantissa << 13);
  const uint32_t subnormal = sign | float_as_bits(float(mantissa) * 0x1p-24f);  // exact
  return bits_as_float(exponent == 0 ? subnormal : exponent == 0x1fu ? inf_or_nan : normal);
#endif
}
FO_HOST_DEVICE FO_INLINE void store_value(fp16_bits& h, float f) {
#if defined(__CUDA_ARCH__)
  h.x = __half_as_ushort(__float2half_rn(f));
#else
  const uint32_t u = float_as_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t magnitude = u & 0x7fffffffu;
  // below 2^-14: a multiple of 2^-24, rounded by one fp32 addition to 0.5 (ulp 2^-24); the
  // bits above 0.5's are the fp16 encoding, 0x400 when it rounds up to the smallest normal
  const uint32_t subnormal = float_as_bits(bits_as_float(magnitude) + 0.5f) - 0x3f000000u;
  // normal: rebias the exponent and round the 13 dropped bits to nearest even
  const uint32_t normal = (magnitude + 0xc8000fffu + ((magnitude >> 13) & 1u)) >> 13;
  // 65520 and above round to infinity; NaN stays a quiet NaN
  const uint32_t out = magnitude > 0x7f800000u   ? 0x7e00u
                       : magnitude >= 0x477ff000u ? 0x7c00u
                       : magnitude < 0x38800000u  ? subnormal
                                                  : normal;
  h.x = uint16_t(sign | out);
#endif
}

FO_HOST_DEVICE FO_INLINE float load_value(float f) { return f; }
FO_HOST_DEVICE FO_INLINE void store_value(float& dst, float f) { dst = f; }
FO_HOST_DEVICE FO_INLINE double load_value(double d) { return d; }
FO_HOST_DEVICE FO_INLINE void store_value(double& dst, double d) { dst = d; }

// The register type the math runs in for a storage type: fp64 for fp64, fp32 otherwise.
template <class Storage> struct math_type { using type = float; };
template <> struct math_type<double> { using type = double; };
template <class Storage> using math_t = typename math_type<Storage>::type;

}  // namespace fused_optim
