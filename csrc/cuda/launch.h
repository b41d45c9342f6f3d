// The boundary between host C++ and nvcc-compiled code. The .cu files export
// only these noexcept launchers: they take raw pointers and sizes, enqueue
// kernels on the given stream and return the launch's cudaError_t. Every
// argument check, allocation and TORCH_CHECK lives in the host files
// (*_ops.cpp) compiled by the C++ compiler, so no C++ exception is ever
// thrown inside (or through) nvcc-compiled code. No ATen here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../score_math.h"

namespace unseen_fast::cuda {

enum class Element : int { kFloat32, kBFloat16, kFloat16 };

// score: up to kMaxScoreMethods method codes, 4 bits each (codes < 16).
constexpr int kMaxScoreMethods = 16;

struct ScoreLaunch {
  const void* logits;
  Element element;
  int64_t rows, cols, row_stride, col_stride;  // in elements
  bool aligned;           // rows can be read with 16-byte loads (row_reduce.cuh)
  const int64_t* labels;  // [rows] or nullptr; out-of-range labels give NaN
  uint64_t methods;       // method j = (methods >> 4j) & 15
  int num_methods;
  float* out;             // [rows, num_methods], contiguous
};

cudaError_t launch_score(const ScoreLaunch& args, cudaStream_t stream) noexcept;

// cross_entropy_with_stats: per row the loss, kNumLossStats statistics and
// the gradient d loss / d logits (float32, or bfloat16 for bfloat16 logits).
struct LossLaunch {
  const void* logits;
  Element element;
  int64_t rows, cols, row_stride, col_stride;  // in elements
  bool aligned;           // rows can be read with 16-byte loads (row_reduce.cuh)
  const int64_t* labels;  // [rows]; out-of-range labels give a NaN row
  LossTarget target;      // loss_target(label_smoothing, cols)
  float* loss;            // [rows]
  float* stats;           // [rows, kNumLossStats], contiguous
  void* grad;             // [rows, cols], contiguous
};

cudaError_t launch_loss(const LossLaunch& args, cudaStream_t stream) noexcept;

}  // namespace unseen_fast::cuda
