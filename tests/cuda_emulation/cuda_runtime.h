// A host emulation of the little of the CUDA runtime and language the kernels use, so that
// tests/test_cuda_backend.py can compile csrc/cuda/*.cu as C++ and run them on host memory
// on a machine without a GPU. Blocks run one after another; the threads of a block with
// barriers are coroutines (ucontext) scheduled round-robin, each running until its next
// __syncthreads or its end, so a round is one barrier phase and __shared__ storage is
// block-wide. A block whose threads do not all meet at the same barrier aborts (a divergent
// barrier is a kernel bug).
// It checks the kernels' indexing, packing, masking, chunk walk and reduction order; it says
// nothing about timing, memory coalescing or the device compiler.
// Found before the real header because the test puts this directory first on the include path.
#pragma once
#include <ucontext.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__
// one block runs at a time, so function-local statics are exactly block-wide shared memory
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx(0);
inline dim3 blockIdx(0);
inline dim3 blockDim(1);

using cudaStream_t = struct emulated_stream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorInvalidValue"; }
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct EmulatedBlock {
  static constexpr std::size_t kStack = 64 * 1024;
  std::function<void()> body;
  std::vector<ucontext_t> threads;
  std::vector<char> done;
  std::unique_ptr<char[]> stacks;
  ucontext_t scheduler;
  unsigned current = 0;
  bool plain = false;  // threads run as plain calls: reaching a barrier is a divergence
};
inline EmulatedBlock*& emulated_block() {
  static EmulatedBlock* block = nullptr;
  return block;
}
[[noreturn]] inline void emulated_divergence() {
  std::fprintf(stderr, "emulated CUDA: divergent __syncthreads in block %u\n", blockIdx.x);
  std::abort();
}
inline void emulated_thread_entry() {
  EmulatedBlock* b = emulated_block();
  b->body();
  b->done[b->current] = 1;  // returns to the scheduler through uc_link
}
inline void __syncthreads() {
  EmulatedBlock* b = emulated_block();
  if (b->plain) emulated_divergence();
  swapcontext(&b->threads[b->current], &b->scheduler);
}

inline void emulated_start(EmulatedBlock& b, unsigned t) {
  getcontext(&b.threads[t]);
  b.threads[t].uc_stack.ss_sp = b.stacks.get() + std::size_t(t) * EmulatedBlock::kStack;
  b.threads[t].uc_stack.ss_size = EmulatedBlock::kStack;
  b.threads[t].uc_link = &b.scheduler;
  makecontext(&b.threads[t], emulated_thread_entry, 0);
}

inline void emulated_resume(EmulatedBlock& b, unsigned t) {
  b.current = t;
  threadIdx = dim3(t);
  swapcontext(&b.scheduler, &b.threads[t]);
}

// Thread 0 runs first as a coroutine. If it ends without reaching a barrier, the block has
// none (barriers are block-uniform), and the other threads run as plain calls, which is much
// faster; otherwise every thread is a coroutine and each round is one barrier phase.
inline void emulated_run_block(EmulatedBlock& b, unsigned nthreads) {
  b.threads.assign(nthreads, ucontext_t{});
  b.done.assign(nthreads, 0);
  if (!b.stacks) b.stacks.reset(new char[EmulatedBlock::kStack * 1024]);
  emulated_start(b, 0);
  emulated_resume(b, 0);
  if (b.done[0]) {
    b.plain = true;
    for (unsigned t = 1; t < nthreads; ++t) {
      b.current = t;
      threadIdx = dim3(t);
      b.body();
    }
    b.plain = false;
    return;
  }
  for (unsigned t = 1; t < nthreads; ++t) emulated_start(b, t);
  for (unsigned first = 1, alive = 1; alive; first = 0) {
    unsigned finished = 0, waiting = first;  // thread 0 already waits at the first barrier
    for (unsigned t = first; t < nthreads; ++t) {
      if (b.done[t]) continue;
      emulated_resume(b, t);
      (b.done[t] ? finished : waiting) += 1;
    }
    if (finished > 0 && waiting > 0) emulated_divergence();
    alive = waiting > 0;
  }
}

template <class... A, std::size_t... I>
auto emulated_arguments(void** args, std::index_sequence<I...>) {
  return std::make_shared<std::tuple<std::remove_const_t<A>...>>(*static_cast<std::remove_const_t<A>*>(args[I])...);
}

// The typed launch: copies the arguments as a launch does (kernels get them by value), then
// runs the grid to completion (the emulated stream is synchronous).
template <class... A>
cudaError_t cudaLaunchKernel(void (*kernel)(A...), dim3 grid, dim3 block, void** args, std::size_t, cudaStream_t) {
  if (block.x > 1024) return cudaErrorInvalidValue;
  auto copy = emulated_arguments<A...>(args, std::index_sequence_for<A...>{});
  static EmulatedBlock b;
  b.body = [&] { std::apply(kernel, *copy); };
  emulated_block() = &b;
  blockDim = block;
  for (unsigned i = 0; i < grid.x; ++i) {
    blockIdx = dim3(i);
    emulated_run_block(b, block.x);
  }
  return cudaSuccess;
}

// The form driver.h calls, with the kernel's function type named (as CUDA 12 needs it): the
// typed launch above.
template <class F>
cudaError_t cudaLaunchKernel(F* kernel, dim3 grid, dim3 block, void** args, std::size_t shared, cudaStream_t stream) {
  return cudaLaunchKernel(kernel, grid, block, args, shared, stream);
}
