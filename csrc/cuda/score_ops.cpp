// Host side of the CUDA score op, compiled by the C++ compiler: argument
// checks, allocation (launch_args.h) and the launch (launch.h). Exceptions
// are thrown here, never inside nvcc-compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch_args.h"

namespace unseen_fast {
namespace {

at::Tensor score_cuda(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                      at::IntArrayRef methods, bool check_labels) {
  // checks first: with a CPU tensor among the arguments the device message, not the guard's, is raised
  const cuda::ScoreCall call = cuda::prepare_score(logits, labels, methods, check_labels);
  const c10::cuda::CUDAGuard guard(logits.device());
  if (call.empty()) return call.out;
  C10_CUDA_CHECK(cuda::launch_score(call.launch, c10::cuda::getCurrentCUDAStream()));
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) { m.impl("score", &score_cuda); }

}  // namespace unseen_fast
