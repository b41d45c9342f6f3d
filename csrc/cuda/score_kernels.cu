// CUDA kernel of score: TPR threads per row (row_reduce.cuh) build the row's
// SoftmaxState with the shared online merge, then lanes write the row's
// outputs side by side with the same finalize as the CPU kernel
// (score_math.h). Method codes are unpacked from one 64-bit word (no
// dynamically indexed list in local memory). Launchers only: checks are in
// score_ops.cpp.
#include "launch.h"
#include "row_reduce.cuh"

namespace unseen_fast::cuda {
namespace {

template <typename T, int TPR, bool kUnitStride>
__global__ void __launch_bounds__(kBlock) score_kernel(const ScoreLaunch a) {
  const RowThread<TPR> t(a.rows);
  const T* r = static_cast<const T*>(a.logits) + (t.active ? t.row : 0) * a.row_stride;
  const SoftmaxState s = row_state<T, TPR, kUnitStride>(t, r, a.cols, a.col_stride, a.aligned);
  if (!t.active) return;
  int64_t label = -1;
  float label_logit = 0.f;
  if (a.labels != nullptr) {
    const int64_t y = a.labels[t.row];
    if (y >= 0 && y < a.cols) {  // out of range: the label methods give NaN
      label = y;
      label_logit = to_float(r[y * a.col_stride]);
    }
  }
  for (int j = t.lane; j < a.num_methods; j += RowThread<TPR>::kWarp) {
    const int64_t method = static_cast<int64_t>((a.methods >> (4 * j)) & 15u);
    a.out[t.row * a.num_methods + j] = finalize(s, method, label, label_logit);
  }
}

template <typename T, bool kUnitStride>
cudaError_t launch_typed(const ScoreLaunch& a, cudaStream_t stream) {
  return launch_by_width(a.cols, [&](auto tpr) {
    constexpr int TPR = decltype(tpr)::value;
    return launch_kernel(score_kernel<T, TPR, kUnitStride>, blocks_for<TPR>(a.rows), kBlock, stream, a);
  });
}

template <typename T>
cudaError_t launch_typed(const ScoreLaunch& a, cudaStream_t stream) {
  return a.col_stride == 1 ? launch_typed<T, true>(a, stream) : launch_typed<T, false>(a, stream);
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
