// What an entry point of fused_optim._cpu does with its Call (fused_optim/call.h) before and
// around its loops: the checks every entry point shares, and the walk over the chunks of the
// call's lists on its threads.
#pragma once
#include <cstdint>
#include <vector>

#include "driver.h"
#include "param_access.h"

namespace fused_optim::cpu {

enum class Steps { kPerTensor, kGlobal };

// Checks the thread count, the steps (one per tensor, or DualAdam's global one), the param
// storage (whose list `roles` gets appended) and the lists against `roles`: the dtypes of every
// list the operation declares (params first, in the declaration's order; unread: those this
// call's flags leave out, which may be absent); returns the storage. Throws before anything
// is read.
inline ParamStorage check_call(const Call& call, std::vector<DType>& roles, Steps steps,
                               const std::vector<size_t>& unread = {}) {
  check_threads(call.where, call.num_threads);
  if (steps == Steps::kPerTensor) check_steps(call, false);
  else check_global_step(call, false);
  ParamStorage storage = param_storage(call, roles[0], roles);
  check_lists(call.where, call.lists, roles, call.numels, unread);
  return storage;
}

// The count tensor t steps to: its own count plus one, or the global one's (DualAdam, whose
// calls carry no per-tensor steps).
inline double step_count(const Call& call, size_t t) {
  return (call.steps.empty() ? call.global_step : call.steps[t]) + 1.0;
}

// One chunk of a call: elements [begin, begin + size) of tensor `tensor` in every role.
struct Chunk {
  const AddressLists* lists;
  int64_t tensor, begin, size;
  ParamExtra extra;  // the chunk's master/remainder data or stochastic key (param_access.h)

  template <class X>
  X* role(int k) const {
    return address<X>((*lists)[size_t(k)][size_t(tensor)], begin);
  }
};

// Calls body(chunk, chunk_index) for every chunk of the call's lists on at most
// call.num_threads threads, as many as the call's bytes pay for (driver.h's threads_for; plan:
// the call's plan_chunks, whose chunk indices body may use).
template <class Body>
void for_each_call_chunk(const Call& call, const ChunkPlan& plan, const ParamStorage& storage, Body&& body) {
  for_each_chunk(plan, call.numels, call_bytes_per_element(call), call.num_threads, [&](ChunkSpan s, int64_t c) {
    body(Chunk{&call.lists, s.tensor, s.begin, s.size, storage.chunk(s.tensor, s.begin)}, c);
  });
}

// The same for a call whose elements are independent (the one-pass updates): its chunks may be
// cut smaller (plan_elementwise), so body must not depend on the chunk index.
template <class Body>
void for_each_call_element_chunk(const Call& call, const ParamStorage& storage, Body&& body) {
  const int64_t bytes_per_element = call_bytes_per_element(call);
  const int threads = threads_for(list_bytes(call.numels, bytes_per_element), call.num_threads, bytes_per_thread());
  for_each_call_chunk(call, plan_elementwise(call.numels, threads), storage,
                      [&](const Chunk& c, int64_t) { body(c); });
}

}  // namespace fused_optim::cpu
