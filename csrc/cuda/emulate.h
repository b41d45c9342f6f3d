// The CUDA execution model on the CPU, for tests on machines without a GPU:
// the kernels of csrc/cuda/*.cu compiled by the C++ compiler with
// -DUNSEEN_FAST_EMULATE_CUDA run block after block, each CUDA thread a fiber
// (ucontext) of one OS thread. Fibers switch only at __syncthreads and at
// warp operations; the order they run in between is shuffled (seeded), so a
// read of shared memory that lacks its barrier shows up as a wrong result.
// Strict where CUDA says "undefined": a __syncthreads that not every thread
// of the block reaches, a full-mask warp operation without all 32 lanes, or
// lanes of one warp in different warp operations, or a misaligned vector
// load (__ldg of a float4, load_shared_piece), stop the launch with a
// message instead of hanging or guessing; the launch then returns
// cudaErrorLaunchFailure (emu::last_failure() says why), as the noexcept
// launchers need.
//
// It checks the kernels' logic (indexing, reductions, shuffles, barriers,
// tails), not their speed, their memory model or the device's math library
// (expf here is glibc's). Only what the kernels use is provided: 1-D grids
// and blocks, static __shared__ arrays, __shfl*_sync / __syncwarp /
// __ballot_sync / __match_any_sync with the full mask, integer atomics, __ldg.
#pragma once

#ifndef UNSEEN_FAST_EMULATE_CUDA
#error "emulate.h is only for builds with -DUNSEEN_FAST_EMULATE_CUDA"
#endif

#include <cuda_runtime_api.h>
#include <vector_types.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// One block's threads share a static __shared__ variable: blocks run one
// after another on one OS thread, so a function-local static is exactly the
// block's shared memory (uninitialized between blocks as far as kernels may
// assume).
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define threadIdx (::unseen_fast::emu::current_fiber().thread_idx)
#define blockIdx (::unseen_fast::emu::current_block().block_idx)
#define blockDim (::unseen_fast::emu::current_block().block_dim)
#define gridDim (::unseen_fast::emu::current_block().grid_dim)

namespace unseen_fast::emu {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kFiberStack = 256 * 1024;

enum class Wait { kNone, kBlockBarrier, kWarp, kDone };
enum class WarpOp { kSync, kXor, kIdx, kDown, kUp, kBallot, kMatchAny };

struct Fiber {
  ucontext_t context;
  uint3 thread_idx;
  Wait wait = Wait::kNone;
  WarpOp op = WarpOp::kSync;
  int op_param = 0, op_width = kWarpSize;
  uint64_t value = 0, result = 0;  // a warp operation's operand and its result (bits)
};

struct Block {
  uint3 block_idx;
  uint3 block_dim;
  uint3 grid_dim;
  std::vector<Fiber> fibers;
  std::unique_ptr<char[]> stacks;  // not zero-filled: untouched pages cost nothing
  ucontext_t scheduler;
  std::function<void()> body;
  Fiber* running = nullptr;
  std::string error;  // set by a fiber that met an unsupported operation
};

inline Block*& block_slot() {
  static thread_local Block* block = nullptr;
  return block;
}

inline Block& current_block() { return *block_slot(); }
inline Fiber& current_fiber() { return *block_slot()->running; }

inline void yield_to_scheduler(Wait wait) {
  Block& b = current_block();
  Fiber& f = *b.running;
  f.wait = wait;
  swapcontext(&f.context, &b.scheduler);
}

inline void fiber_entry() {
  Block& b = current_block();
  b.body();
  b.running->wait = Wait::kDone;  // uc_link returns to the scheduler
}

[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error("CUDA emulation: " + what);
}

// From inside a fiber: no exception may unwind a fiber's stack, so record
// the message and leave the fiber parked for good; the scheduler throws.
[[noreturn]] inline void fail_in_fiber(const std::string& what) {
  Block& b = current_block();
  b.error = what;
  for (;;) yield_to_scheduler(Wait::kDone);
}

// A vector load or store of `bytes` at p: the GPU faults on a misaligned
// address ("misaligned address", the context is lost); here the launch stops
// with a message instead of reading whatever x86 reads there.
inline void check_aligned(const void* p, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0)
    fail_in_fiber("misaligned " + std::to_string(bytes) + "-byte access at " +
                  std::to_string(reinterpret_cast<uintptr_t>(p) % 64) + " bytes past a 64-byte boundary");
}

// Lane `lane` of a warp operation reads which lane (-1: its own value).
inline int source_lane(const Fiber& f, int lane) {
  const int width = f.op_width, base = lane & ~(width - 1);
  switch (f.op) {
    case WarpOp::kXor: {
      const int src = lane ^ f.op_param;
      return src < base + width ? src : lane;  // later groups give the own value
    }
    case WarpOp::kIdx:
      return base + (f.op_param % width + width) % width;
    case WarpOp::kDown:
      return lane + f.op_param < base + width ? lane + f.op_param : lane;
    case WarpOp::kUp:
      return lane - f.op_param >= base ? lane - f.op_param : lane;
    default:
      return lane;
  }
}

// When all 32 lanes of a warp wait in the same warp operation, complete it.
inline bool release_warp(Block& b, size_t first) {
  Fiber* lanes = &b.fibers[first];
  for (int l = 0; l < kWarpSize; ++l)
    if (lanes[l].wait != Wait::kWarp) return false;
  for (int l = 1; l < kWarpSize; ++l)
    if (lanes[l].op != lanes[0].op || lanes[l].op_width != lanes[0].op_width)
      fail("lanes of warp " + std::to_string(first / kWarpSize) + " are in different warp operations");
  uint64_t ballot = 0;
  for (int l = 0; l < kWarpSize; ++l) ballot |= (lanes[l].value != 0 ? uint64_t{1} : 0) << l;
  for (int l = 0; l < kWarpSize; ++l) {
    Fiber& f = lanes[l];
    if (f.op == WarpOp::kMatchAny) {  // the lanes holding the same bits
      f.result = 0;
      for (int m = 0; m < kWarpSize; ++m) f.result |= (lanes[m].value == f.value ? uint64_t{1} : 0) << m;
    } else {
      f.result = f.op == WarpOp::kBallot ? ballot : lanes[source_lane(f, l)].value;
    }
    f.wait = Wait::kNone;
  }
  return true;
}

inline std::string describe_waits(const Block& b) {
  int counts[4] = {0, 0, 0, 0};
  for (const Fiber& f : b.fibers) counts[static_cast<int>(f.wait)] += 1;
  return "block " + std::to_string(b.block_idx.x) + ": " + std::to_string(counts[1]) + " threads at __syncthreads, " +
         std::to_string(counts[2]) + " in warp operations, " + std::to_string(counts[3]) + " exited";
}

// Runs every fiber until all exit; barriers release when every thread of the
// block (or warp) waits in them.
inline void run_block(Block& b, std::mt19937& order_rng) {
  const size_t threads = b.fibers.size();
  for (size_t i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    f = Fiber{};
    f.thread_idx = uint3{static_cast<unsigned>(i), 0, 0};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = b.stacks.get() + i * kFiberStack;
    f.context.uc_stack.ss_size = kFiberStack;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_entry, 0);
  }
  std::vector<size_t> order(threads);
  for (;;) {
    order.clear();
    for (size_t i = 0; i < threads; ++i)
      if (b.fibers[i].wait == Wait::kNone) order.push_back(i);
    std::shuffle(order.begin(), order.end(), order_rng);
    for (size_t i : order) {
      b.running = &b.fibers[i];
      swapcontext(&b.scheduler, &b.fibers[i].context);
    }
    b.running = nullptr;
    if (!b.error.empty()) fail(b.error);
    size_t done = 0, at_barrier = 0;
    for (const Fiber& f : b.fibers) {
      done += f.wait == Wait::kDone;
      at_barrier += f.wait == Wait::kBlockBarrier;
    }
    if (done == threads) return;
    bool released = false;
    if (threads % kWarpSize == 0)
      for (size_t first = 0; first < threads; first += kWarpSize) released |= release_warp(b, first);
    if (released) continue;
    const bool in_warp_op = std::any_of(b.fibers.begin(), b.fibers.end(),
                                        [](const Fiber& f) { return f.wait == Wait::kWarp; });
    if (in_warp_op && threads % kWarpSize != 0)
      fail("warp operations in a block of " + std::to_string(threads) + " threads (not whole warps)");
    if (at_barrier == threads) {
      for (Fiber& f : b.fibers) f.wait = Wait::kNone;
      continue;
    }
    fail("no thread can go on (" + describe_waits(b) +
         "): a __syncthreads or full-mask warp operation that not every thread reaches");
  }
}

// Every launch gets a fresh fiber order: seeded, so a failure reproduces.
inline std::mt19937& order_rng() {
  static thread_local std::mt19937 rng(12345);
  return rng;
}

inline void set_order_seed(uint32_t seed) { order_rng().seed(seed); }

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp operations on values of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

template <typename T>
T warp_op(unsigned mask, WarpOp op, T v, int param, int width) {
  if (mask != kFullMask) fail_in_fiber("only full-mask warp operations are emulated");
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0)
    fail_in_fiber("shuffle width must be a power of 2 <= 32");
  Fiber& f = current_fiber();
  f.op = op;
  f.op_param = param;
  f.op_width = width;
  f.value = to_bits(v);
  yield_to_scheduler(Wait::kWarp);
  return from_bits<T>(current_fiber().result);
}

}  // namespace unseen_fast::emu

inline void __syncthreads() { ::unseen_fast::emu::yield_to_scheduler(::unseen_fast::emu::Wait::kBlockBarrier); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::unseen_fast::emu::warp_op(mask, ::unseen_fast::emu::WarpOp::kSync, 0, 0, 32);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::unseen_fast::emu::warp_op(mask, ::unseen_fast::emu::WarpOp::kXor, v, lane_mask, width);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return ::unseen_fast::emu::warp_op(mask, ::unseen_fast::emu::WarpOp::kIdx, v, src_lane, width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::unseen_fast::emu::warp_op(mask, ::unseen_fast::emu::WarpOp::kDown, v, static_cast<int>(delta), width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::unseen_fast::emu::warp_op(mask, ::unseen_fast::emu::WarpOp::kUp, v, static_cast<int>(delta), width);
}
template <typename T>
unsigned __match_any_sync(unsigned mask, T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "32- or 64-bit values");
  return static_cast<unsigned>(::unseen_fast::emu::warp_op<uint64_t>(
      mask, ::unseen_fast::emu::WarpOp::kMatchAny, ::unseen_fast::emu::to_bits(v), 0, 32));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(
      ::unseen_fast::emu::warp_op<uint32_t>(mask, ::unseen_fast::emu::WarpOp::kBallot, predicate != 0, 0, 32));
}

template <typename T>
T __ldg(const T* p) {
  ::unseen_fast::emu::check_aligned(p, alignof(T));  // float4 / uint4: 16 bytes
  return *p;
}
inline float __uint_as_float(unsigned u) { return ::unseen_fast::emu::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return static_cast<unsigned>(::unseen_fast::emu::to_bits(f)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(unsigned v) { return v == 0 ? 32 : __builtin_clz(v); }
inline int __ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }

// Fibers switch only at barriers and warp operations, so these are atomic.
template <typename T>
T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}
template <typename T>
T atomicMax(T* address, T v) {
  const T old = *address;
  *address = std::max(old, v);
  return old;
}
template <typename T>
T atomicMin(T* address, T v) {
  const T old = *address;
  *address = std::min(old, v);
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T v) {
  const T old = *address;
  if (old == compare) *address = v;
  return old;
}
template <typename T>
T atomicOr(T* address, T v) {
  const T old = *address;
  *address = old | v;
  return old;
}

namespace unseen_fast::emu {

// Why the last launch on this thread failed (launch_kernel returns only
// cudaErrorLaunchFailure).
inline std::string& last_failure() {
  static thread_local std::string message;
  return message;
}

}  // namespace unseen_fast::emu

namespace unseen_fast::cuda {

// The emulated launch: blocks in order, each on fibers; shared memory and
// the fiber stacks are reused. The stream is ignored (everything is done
// when this returns).
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), unsigned blocks, unsigned threads, cudaStream_t,
                          Args&&... args) {
  if (blocks == 0 || threads == 0 || threads > 1024) return cudaErrorInvalidConfiguration;
  emu::Block b;
  b.block_dim = uint3{threads, 1, 1};
  b.grid_dim = uint3{blocks, 1, 1};
  b.fibers.resize(threads);
  b.stacks.reset(new char[static_cast<size_t>(threads) * emu::kFiberStack]);
  b.body = [&] { kernel(args...); };
  emu::Block*& slot = emu::block_slot();
  emu::Block* const outer = slot;
  slot = &b;
  try {
    for (unsigned i = 0; i < blocks; ++i) {
      b.block_idx = uint3{i, 0, 0};
      emu::run_block(b, emu::order_rng());
    }
  } catch (const std::exception& e) {
    // the launchers are noexcept (an exception would abort the process):
    // a failed launch returns an error code, as on the GPU
    slot = outer;
    emu::last_failure() = e.what();
    return cudaErrorLaunchFailure;
  }
  slot = outer;
  return cudaSuccess;
}

}  // namespace unseen_fast::cuda
