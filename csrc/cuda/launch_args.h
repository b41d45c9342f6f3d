// Host side only (ATen): the argument checks, the outputs and the launch
// structs (launch.h) of the CUDA ops, shared by the ops (*_ops.cpp) and the
// emulated kernels of the tests (tests/cuda_emulated), so both run the same
// host code up to the launch.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "../checks.h"
#include "launch.h"

namespace unseen_fast::cuda {

// Only the three dtypes check_score_args admits reach here.
inline Element element_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return Element::kFloat32;
    case at::kBFloat16:
      return Element::kBFloat16;
    default:
      return Element::kFloat16;
  }
}

// Whether the kernels may read rows with 16-byte loads: adjacent columns, the
// base and every row start 16-byte aligned.
inline bool rows_are_aligned(const at::Tensor& logits) {
  return logits.stride(1) == 1 && reinterpret_cast<uintptr_t>(logits.const_data_ptr()) % 16 == 0 &&
         (logits.stride(0) * logits.element_size()) % 16 == 0;
}

struct ScoreCall {
  at::Tensor out;     // [N, M] float32
  at::Tensor labels;  // kept alive until the launch
  ScoreLaunch launch;
  bool empty() const { return launch.rows == 0 || launch.num_methods == 0; }
};

inline ScoreCall prepare_score(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                               at::IntArrayRef methods, bool check_labels) {
  check_score_args(logits, labels, methods, check_labels);
  const int64_t N = logits.size(0);
  const int64_t M = static_cast<int64_t>(methods.size());
  TORCH_CHECK(M <= kMaxScoreMethods, "score: at most ", kMaxScoreMethods, " methods per call on CUDA, got ", M);
  TORCH_CHECK(N <= INT32_MAX, "score: N=", N, " rows is more than 2^31 - 1 on CUDA; split it");
  ScoreCall call;
  call.out = at::empty({N, M}, logits.options().dtype(at::kFloat));
  uint64_t packed = 0;
  for (int64_t j = 0; j < M; ++j) packed |= static_cast<uint64_t>(methods[j]) << (4 * j);
  static_assert(kNumMethods <= 16, "method codes are packed in 4 bits");
  call.labels = labels.has_value() ? labels->contiguous() : at::Tensor();
  call.launch = ScoreLaunch{logits.const_data_ptr(), element_of(logits.scalar_type()), N, logits.size(1),
                            logits.stride(0), logits.stride(1), rows_are_aligned(logits),
                            call.labels.defined() ? call.labels.const_data_ptr<int64_t>() : nullptr, packed,
                            static_cast<int>(M), call.out.data_ptr<float>()};
  return call;
}

struct LossCall {
  at::Tensor loss, stats, grad;  // [N], [N, kNumLossStats], [N, C]
  at::Tensor labels;             // kept alive until the launch
  LossLaunch launch;
};

inline LossCall prepare_loss(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing,
                             bool check_labels) {
  check_loss_args(logits, labels, label_smoothing, check_labels);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(N <= INT32_MAX, "cross_entropy_with_stats: N=", N, " rows is more than 2^31 - 1 on CUDA; split it");
  LossCall call;
  call.loss = at::empty({N}, logits.options().dtype(at::kFloat));
  call.stats = at::empty({N, kNumLossStats}, logits.options().dtype(at::kFloat));
  call.grad = at::empty({N, C}, logits.options().dtype(loss_gradient_dtype(logits.scalar_type())));
  call.labels = labels.contiguous();
  call.launch = LossLaunch{logits.const_data_ptr(), element_of(logits.scalar_type()), N, C,
                           logits.stride(0), logits.stride(1), rows_are_aligned(logits),
                           call.labels.const_data_ptr<int64_t>(), loss_target(label_smoothing, C),
                           call.loss.data_ptr<float>(), call.stats.data_ptr<float>(), call.grad.data_ptr()};
  return call;
}

}  // namespace unseen_fast::cuda
