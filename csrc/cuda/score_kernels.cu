// CUDA kernel of score: TPR threads per row (1, 8, 32 or 256 by C) each fold a strided
// slice of the row into a SoftmaxState with the shared online merge; the
// states are merged by warp shuffles (and shared memory for 256-thread rows)
// and each lane then writes some of the row's outputs. The same merge and
// finalize as the CPU kernel (score_math.h). Everything stays in registers:
// states merged by value, method codes unpacked from one 64-bit word (a test
// fails on any stack frame or spill). Launchers only: checks are in
// score_ops.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../score_math.h"
#include "launch.h"

namespace unseen_fast::cuda {
namespace {

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

// kUnitStride: columns adjacent (the common case), so the column offset is a
// 32-bit index instead of a 64-bit multiply per element.
template <typename T, int TPR, bool kUnitStride>
__global__ void __launch_bounds__(kBlock) score_kernel(const ScoreLaunch a) {
  constexpr int kWarp = TPR < 32 ? TPR : 32;
  const T* logits = static_cast<const T*>(a.logits);
  const int lane = threadIdx.x % TPR;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / TPR) + threadIdx.x / TPR;
  const bool active = row < a.rows;  // inactive threads still join the shuffles
  const T* r = logits + (active ? row : 0) * a.row_stride;
  const int cols = static_cast<int>(a.cols);  // the host checked C < 2^31
  SoftmaxState s = empty_state();
  if (active) {
    for (int c = lane; c < cols; c += TPR)
      push(s, to_float(kUnitStride ? r[c] : r[c * a.col_stride]), c);
  }
  // xor butterfly: every lane ends with the whole row's state
  for (int offset = kWarp / 2; offset > 0; offset /= 2) s = merge(s, shfl_xor(s, offset, kWarp));
  if constexpr (TPR > 32) {
    __shared__ SoftmaxState warp_states[TPR / 32];
    if (lane % 32 == 0) warp_states[lane / 32] = s;
    __syncthreads();
    if (lane >= 32) return;
    s = lane < TPR / 32 ? warp_states[lane] : empty_state();
    for (int offset = 16; offset > 0; offset /= 2) s = merge(s, shfl_xor(s, offset, 32));
  }
  if (!active) return;
  int64_t label = -1;
  float label_logit = 0.f;
  if (a.labels != nullptr) {
    const int64_t y = a.labels[row];
    if (y >= 0 && y < a.cols) {  // out of range: the label methods give NaN
      label = y;
      label_logit = to_float(r[y * a.col_stride]);
    }
  }
  // lanes write the row's outputs side by side
  for (int j = lane; j < a.num_methods; j += kWarp) {
    const int64_t method = static_cast<int64_t>((a.methods >> (4 * j)) & 15u);
    a.out[row * a.num_methods + j] = finalize(s, method, label, label_logit);
  }
}

template <typename T, int TPR, bool kUnitStride>
cudaError_t launch_rows(const ScoreLaunch& a, cudaStream_t stream) {
  constexpr int64_t kRowsPerBlock = kBlock / TPR;
  const int64_t blocks = (a.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  score_kernel<T, TPR, kUnitStride><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, bool kUnitStride>
cudaError_t launch_for_width(const ScoreLaunch& a, cudaStream_t stream) {
  // A few classes: one thread per row, no shuffles (8 threads sharing a
  // 40-byte row spent most of their time merging states).
  if (a.cols <= 16) return launch_rows<T, 1, kUnitStride>(a, stream);
  if (a.cols <= 64) return launch_rows<T, 8, kUnitStride>(a, stream);
  if (a.cols <= 2048) return launch_rows<T, 32, kUnitStride>(a, stream);
  return launch_rows<T, 256, kUnitStride>(a, stream);
}

template <typename T>
cudaError_t launch_typed(const ScoreLaunch& a, cudaStream_t stream) {
  return a.col_stride == 1 ? launch_for_width<T, true>(a, stream)
                           : launch_for_width<T, false>(a, stream);
}

}  // namespace

cudaError_t launch_score(const ScoreLaunch& a, cudaStream_t stream) noexcept {
  if (a.rows == 0 || a.num_methods == 0) return cudaSuccess;
  if (a.rows > INT32_MAX || a.num_methods > kMaxScoreMethods) return cudaErrorInvalidValue;
  switch (a.element) {
    case Element::kFloat32:
      return launch_typed<float>(a, stream);
    case Element::kBFloat16:
      return launch_typed<__nv_bfloat16>(a, stream);
    case Element::kFloat16:
      return launch_typed<__half>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unseen_fast::cuda
