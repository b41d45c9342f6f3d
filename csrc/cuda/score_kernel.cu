// CUDA kernel of score: TPR threads per row (chosen by C) each fold a strided
// slice of the row into a SoftmaxState with the shared online merge, then the
// states are merged by warp shuffles (and shared memory for 256-thread rows).
// The same merge and finalize as the CPU kernel (score_math.h). No host sync:
// the optional label check is the only one, in check_score_args.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../checks.h"
#include "../score_math.h"

namespace unseen_fast {
namespace {

constexpr int kBlock = 256;
constexpr int kMaxMethods = 16;

struct MethodList {
  int64_t code[kMaxMethods];
  int64_t size;
};

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

template <typename T, int TPR>
__global__ void __launch_bounds__(kBlock) score_kernel(
    const T* __restrict__ logits, int64_t N, int64_t C, int64_t row_stride,
    int64_t col_stride, const int64_t* __restrict__ labels, MethodList methods,
    float* __restrict__ out) {
  constexpr int kWarp = TPR < 32 ? TPR : 32;
  const int lane = threadIdx.x % TPR;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kBlock / TPR) + threadIdx.x / TPR;
  const bool active = row < N;  // inactive threads still join the shuffles
  const T* r = logits + (active ? row : 0) * row_stride;
  SoftmaxState s = empty_state();
  if (active)
    for (int64_t c = lane; c < C; c += TPR) push(s, static_cast<float>(r[c * col_stride]), c);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) s = merge(s, shfl_xor(s, offset, kWarp));
  if constexpr (TPR > 32) {
    __shared__ SoftmaxState warp_states[TPR / 32];
    if (lane % 32 == 0) warp_states[lane / 32] = s;
    __syncthreads();
    if (lane >= 32) return;
    s = lane < TPR / 32 ? warp_states[lane] : empty_state();
    for (int offset = 16; offset > 0; offset /= 2) s = merge(s, shfl_xor(s, offset, 32));
  }
  if (!active || lane != 0) return;
  int64_t label = -1;
  float label_logit = 0.f;
  if (labels != nullptr && labels[row] >= 0 && labels[row] < C) {
    label = labels[row];
    label_logit = static_cast<float>(r[label * col_stride]);
  }
  for (int64_t j = 0; j < methods.size; ++j)
    out[row * methods.size + j] = finalize(s, methods.code[j], label, label_logit);
}

template <typename T, int TPR>
void launch(const at::Tensor& logits, const int64_t* labels, const MethodList& methods,
            at::Tensor& out) {
  const int64_t N = logits.size(0);
  const int64_t blocks = (N + kBlock / TPR - 1) / (kBlock / TPR);
  score_kernel<T, TPR><<<blocks, kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      logits.const_data_ptr<T>(), N, logits.size(1), logits.stride(0), logits.stride(1),
      labels, methods, out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_for_width(const at::Tensor& logits, const int64_t* labels,
                      const MethodList& methods, at::Tensor& out) {
  const int64_t C = logits.size(1);
  if (C <= 64) {
    launch<T, 8>(logits, labels, methods, out);
  } else if (C <= 2048) {
    launch<T, 32>(logits, labels, methods, out);
  } else {
    launch<T, 256>(logits, labels, methods, out);
  }
}

at::Tensor score_cuda(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                      at::IntArrayRef methods, bool check_labels) {
  check_score_args(logits, labels, methods, check_labels);
  TORCH_CHECK(static_cast<int64_t>(methods.size()) <= kMaxMethods,
              "score: at most ", kMaxMethods, " methods per call on CUDA, got ", methods.size());
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0);
  at::Tensor out = at::empty({N, static_cast<int64_t>(methods.size())},
                             logits.options().dtype(at::kFloat));
  if (N == 0 || methods.empty()) return out;
  MethodList list{};
  list.size = static_cast<int64_t>(methods.size());
  for (int64_t j = 0; j < list.size; ++j) list.code[j] = methods[j];
  at::Tensor y;
  if (labels.has_value()) y = labels->contiguous();
  const int64_t* y_ptr = labels.has_value() ? y.const_data_ptr<int64_t>() : nullptr;
  switch (logits.scalar_type()) {
    case at::kFloat:
      launch_for_width<float>(logits, y_ptr, list, out);
      break;
    case at::kBFloat16:
      launch_for_width<c10::BFloat16>(logits, y_ptr, list, out);
      break;
    default:
      launch_for_width<c10::Half>(logits, y_ptr, list, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) { m.impl("score", &score_cuda); }

}  // namespace unseen_fast
