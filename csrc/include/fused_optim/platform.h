// Portability macros shared by the CPU and CUDA translation units.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define FO_HOST_DEVICE __host__ __device__
#define FO_INLINE __forceinline__
#else
#define FO_HOST_DEVICE
#define FO_INLINE inline __attribute__((always_inline))
#endif

// Runtime ISA dispatch for the CPU loops: one wheel must run on any x86-64 machine, yet the
// element loops should use AVX2/AVX-512 where present. GCC emits one clone per level plus a
// resolver that picks at load time. Results do not depend on the clone chosen because the
// build disables floating-point contraction (-ffp-contract=off): no clone fuses a*b+c.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define FO_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FO_CPU_CLONES
#endif

// The math headers call sqrt/pow unqualified so that float arguments pick the float overloads
// on the host (std::) and the device (CUDA's math functions) alike.
namespace fused_optim::math {
using std::pow;
using std::sqrt;
}  // namespace fused_optim::math
