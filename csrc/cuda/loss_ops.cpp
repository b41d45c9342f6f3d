// Host side of the CUDA cross_entropy_with_stats op, compiled by the C++
// compiler: argument checks, allocation (launch_args.h) and the launch
// (launch.h). Exceptions are thrown here, never inside nvcc-compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch_args.h"

namespace unseen_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_with_stats_cuda(
    const at::Tensor& logits, const at::Tensor& labels, double label_smoothing, bool check_labels) {
  // checks first: with a CPU tensor among the arguments the device message, not the guard's, is raised
  const cuda::LossCall call = cuda::prepare_loss(logits, labels, label_smoothing, check_labels);
  const c10::cuda::CUDAGuard guard(logits.device());
  if (logits.size(0) > 0)
    C10_CUDA_CHECK(cuda::launch_loss(call.launch, c10::cuda::getCurrentCUDAStream()));
  return {call.loss, call.stats, call.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) { m.impl("cross_entropy_with_stats", &cross_entropy_with_stats_cuda); }

}  // namespace unseen_fast
