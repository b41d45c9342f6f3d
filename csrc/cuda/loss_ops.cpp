// Host side of the CUDA cross_entropy_with_stats op, compiled by the C++
// compiler: argument checks, allocation and the launch (launch.h).
// Exceptions are thrown here, never inside nvcc-compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "element_of.h"

namespace unseen_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_with_stats_cuda(
    const at::Tensor& logits, const at::Tensor& labels, double label_smoothing, bool check_labels) {
  check_loss_args(logits, labels, label_smoothing, check_labels);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(N <= INT32_MAX, "cross_entropy_with_stats: N=", N, " rows is more than 2^31 - 1 on CUDA; split it");
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor loss = at::empty({N}, logits.options().dtype(at::kFloat));
  at::Tensor stats = at::empty({N, kNumLossStats}, logits.options().dtype(at::kFloat));
  at::Tensor grad = at::empty({N, C}, logits.options().dtype(loss_gradient_dtype(logits.scalar_type())));
  if (N == 0) return {loss, stats, grad};
  const at::Tensor y = labels.contiguous();
  const cuda::LossLaunch launch{logits.const_data_ptr(), cuda::element_of(logits.scalar_type()), N, C,
                                logits.stride(0), logits.stride(1), cuda::rows_are_aligned(logits),
                                y.const_data_ptr<int64_t>(),
                                loss_target(label_smoothing, C), loss.data_ptr<float>(),
                                stats.data_ptr<float>(), grad.data_ptr()};
  C10_CUDA_CHECK(cuda::launch_loss(launch, c10::cuda::getCurrentCUDAStream()));
  return {loss, stats, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) { m.impl("cross_entropy_with_stats", &cross_entropy_with_stats_cuda); }

}  // namespace unseen_fast
