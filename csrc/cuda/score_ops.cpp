// Host side of the CUDA score op, compiled by the C++ compiler: argument
// checks, allocation and the launch (launch.h). Exceptions are thrown here,
// never inside nvcc-compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "element_of.h"

namespace unseen_fast {
namespace {

at::Tensor score_cuda(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                      at::IntArrayRef methods, bool check_labels) {
  check_score_args(logits, labels, methods, check_labels);
  const int64_t N = logits.size(0);
  const int64_t M = static_cast<int64_t>(methods.size());
  TORCH_CHECK(M <= cuda::kMaxScoreMethods, "score: at most ", cuda::kMaxScoreMethods,
              " methods per call on CUDA, got ", M);
  TORCH_CHECK(N <= INT32_MAX, "score: N=", N, " rows is more than 2^31 - 1 on CUDA; split it");
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty({N, M}, logits.options().dtype(at::kFloat));
  if (N == 0 || M == 0) return out;
  uint64_t packed = 0;
  for (int64_t j = 0; j < M; ++j) packed |= static_cast<uint64_t>(methods[j]) << (4 * j);
  static_assert(kNumMethods <= 16, "method codes are packed in 4 bits");
  const at::Tensor y = labels.has_value() ? labels->contiguous() : at::Tensor();
  const cuda::ScoreLaunch launch{
      logits.const_data_ptr(), cuda::element_of(logits.scalar_type()), N, logits.size(1),
      logits.stride(0), logits.stride(1), cuda::rows_are_aligned(logits), y.defined() ? y.const_data_ptr<int64_t>() : nullptr,
      packed, static_cast<int>(M), out.data_ptr<float>()};
  C10_CUDA_CHECK(cuda::launch_score(launch, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) { m.impl("score", &score_cuda); }

}  // namespace unseen_fast
