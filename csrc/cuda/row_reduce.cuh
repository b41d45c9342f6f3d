// Device helpers shared by the score and loss kernels: TPR threads own one
// row (1, 8, 32 or 256), each folds a strided slice of it into a
// SoftmaxState (score_math.h), and the states are merged by warp shuffles,
// plus shared memory for 256-thread rows. Every thread of the row ends with
// the whole row's state, merged in the same order (so all agree bit for
// bit). Everything by value in registers: the ptxas test fails on a stack
// frame or a spill.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "../score_math.h"

namespace unseen_fast::cuda {

constexpr int kBlock = 256;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }

__device__ inline SoftmaxState shfl_xor(const SoftmaxState& s, int lane_mask, int width) {
  SoftmaxState o;
  o.max = __shfl_xor_sync(0xffffffffu, s.max, lane_mask, width);
  o.argmax = __shfl_xor_sync(0xffffffffu, static_cast<long long>(s.argmax), lane_mask, width);
  o.second = __shfl_xor_sync(0xffffffffu, s.second, lane_mask, width);
  o.rest_sum = __shfl_xor_sync(0xffffffffu, s.rest_sum, lane_mask, width);
  o.rest_sq = __shfl_xor_sync(0xffffffffu, s.rest_sq, lane_mask, width);
  o.ent_term = __shfl_xor_sync(0xffffffffu, s.ent_term, lane_mask, width);
  o.nan = __shfl_xor_sync(0xffffffffu, static_cast<int>(s.nan), lane_mask, width) != 0;
  return o;
}

// Rows of TPR threads in a block of kBlock: which row and which lane.
template <int TPR>
struct RowThread {
  static constexpr int kWarp = TPR < 32 ? TPR : 32;  // shuffle width
  int lane;
  int64_t row;
  bool active;  // inactive threads (past the last row) still join the shuffles
  __device__ RowThread(int64_t rows)
      : lane(static_cast<int>(threadIdx.x % TPR)),
        row(static_cast<int64_t>(blockIdx.x) * (kBlock / TPR) + threadIdx.x / TPR),
        active(row < rows) {}
};

// The whole row's state in every thread of the row. kUnitStride: columns
// adjacent (the common case), so the offset is a 32-bit index instead of a
// 64-bit multiply per element. All threads of the block must call it.
template <typename T, int TPR, bool kUnitStride>
__device__ SoftmaxState row_state(const RowThread<TPR>& t, const T* r, int cols, int64_t col_stride) {
  SoftmaxState s = empty_state();
  if (t.active)
    for (int c = t.lane; c < cols; c += TPR) push(s, to_float(kUnitStride ? r[c] : r[c * col_stride]), c);
  // xor butterfly: every lane ends with its warp's (part of the) row state
  for (int offset = RowThread<TPR>::kWarp / 2; offset > 0; offset /= 2)
    s = merge(s, shfl_xor(s, offset, RowThread<TPR>::kWarp));
  if constexpr (TPR > 32) {  // a block per row: warps meet in shared memory
    __shared__ SoftmaxState warp_states[TPR / 32];
    if (t.lane % 32 == 0) warp_states[t.lane / 32] = s;
    __syncthreads();
    s = warp_states[0];
    for (int w = 1; w < TPR / 32; ++w) s = merge(s, warp_states[w]);
  }
  return s;
}

// The row's sum of one float per thread, in every thread of the row.
template <int TPR>
__device__ float row_sum(float v, int lane) {
  for (int offset = RowThread<TPR>::kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset, RowThread<TPR>::kWarp);
  if constexpr (TPR > 32) {
    __shared__ float warp_sums[TPR / 32];
    if (lane % 32 == 0) warp_sums[lane / 32] = v;
    __syncthreads();
    v = 0.f;
    for (int w = 0; w < TPR / 32; ++w) v += warp_sums[w];
  }
  return v;
}

template <int TPR>
inline unsigned blocks_for(int64_t rows) {
  constexpr int64_t kRowsPerBlock = kBlock / TPR;
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

// Calls launch(std::integral_constant<int, TPR>) with the threads per row
// for C classes. A few classes: one thread per row, no shuffles (8 threads
// sharing a 40-byte row spent most of their time merging states).
template <typename Launch>
cudaError_t launch_by_width(int64_t cols, Launch&& launch) {
  if (cols <= 16) return launch(std::integral_constant<int, 1>{});
  if (cols <= 64) return launch(std::integral_constant<int, 8>{});
  if (cols <= 2048) return launch(std::integral_constant<int, 32>{});
  return launch(std::integral_constant<int, 256>{});
}

}  // namespace unseen_fast::cuda
