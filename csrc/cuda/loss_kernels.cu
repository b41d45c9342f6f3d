// CUDA kernel of cross_entropy_with_stats, as Liger-Kernel's cross-entropy:
// the row state (row_reduce.cuh), then a second sweep over the row (from L1
// / L2) writes the gradient softmax(z) - target and sums z - max for label
// smoothing; lane 0 writes the loss and the statistics with the formulas of
// score_math.h shared with the CPU kernel. Backward is then a scale.
// Launchers only: checks are in loss_ops.cpp.
#include "launch.h"
#include "row_reduce.cuh"

namespace unseen_fast::cuda {
namespace {

__device__ inline void store(float* out, float g) { *out = g; }
__device__ inline void store(__nv_bfloat16* out, float g) { *out = __float2bfloat16_rn(g); }

template <typename T, typename G, int TPR, bool kUnitStride>
__global__ void __launch_bounds__(kBlock) loss_kernel(const LossLaunch a) {
  const RowThread<TPR> t(a.rows);
  const T* r = static_cast<const T*>(a.logits) + (t.active ? t.row : 0) * a.row_stride;
  const SoftmaxState s = row_state<T, TPR, kUnitStride>(t, r, a.cols, a.col_stride, a.aligned);
  int64_t label = -1;
  float label_logit = 0.f;
  if (t.active) {
    const int64_t y = a.labels[t.row];
    if (y >= 0 && y < a.cols) {  // out of range (check_labels=False): a NaN row
      label = y;
      label_logit = to_float(r[y * a.col_stride]);
    }
  }
  const LossRow lr = loss_row(s, label, a.target);
  float sum_d = 0.f;
  if (t.active) {
    G* g = static_cast<G*>(a.grad) + t.row * a.cols;
    // unrolled by 2: two loads in flight; nvcc's default unroll spilled 4
    // bytes on sm_80 (float16, 32 threads per row), which the ptxas test refuses
#pragma unroll 2
    for (int64_t c = t.lane; c < a.cols; c += TPR) {  // 64-bit: C may be close to 2^31
      const float z = to_float(kUnitStride ? r[c] : r[c * a.col_stride]);
      sum_d += z - lr.max;
      store(g + c, loss_gradient(lr, z, c == label));
    }
  }
  sum_d = row_sum<TPR>(sum_d, t.lane);  // every thread joins the reduction
  if (!t.active || t.lane != 0) return;
  a.loss[t.row] = loss_and_stats(s, label, label_logit, a.target, sum_d / static_cast<float>(a.cols),
                                 a.stats + t.row * kNumLossStats);
}

template <typename T, typename G, bool kUnitStride>
cudaError_t launch_typed(const LossLaunch& a, cudaStream_t stream) {
  return launch_by_width(a.cols, [&](auto tpr) {
    constexpr int TPR = decltype(tpr)::value;
    return launch_kernel(loss_kernel<T, G, TPR, kUnitStride>, blocks_for<TPR>(a.rows), kBlock, stream, a);
  });
}

template <typename T, typename G>
cudaError_t launch_typed(const LossLaunch& a, cudaStream_t stream) {
  return a.col_stride == 1 ? launch_typed<T, G, true>(a, stream) : launch_typed<T, G, false>(a, stream);
}

}  // namespace

cudaError_t launch_loss(const LossLaunch& a, cudaStream_t stream) noexcept {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > INT32_MAX) return cudaErrorInvalidValue;
  switch (a.element) {  // the gradient's dtype: loss_gradient_dtype in checks.h
    case Element::kFloat32:
      return launch_typed<float, float>(a, stream);
    case Element::kBFloat16:
      return launch_typed<__nv_bfloat16, __nv_bfloat16>(a, stream);
    case Element::kFloat16:
      return launch_typed<__half, float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unseen_fast::cuda
