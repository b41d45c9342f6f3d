// Host side of the CUDA apply_lut op, compiled by the C++ compiler: the
// argument checks (checks.h, shared with the CPU kernel), the output and the
// launch (launch.h). Exceptions are thrown here, never inside nvcc-compiled code.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch_args.h"

namespace unseen_fast {
namespace {

at::Tensor apply_lut_cuda(const at::Tensor& pixels, const at::Tensor& table) {
  // checks first: CPU pixels with a CUDA table get the device message, not the guard's
  const cuda::LutCall call = cuda::prepare_lut(pixels, table);
  const c10::cuda::CUDAGuard guard(pixels.device());
  C10_CUDA_CHECK(cuda::launch_lut(call.launch, c10::cuda::getCurrentCUDAStream()));
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) { m.impl("apply_lut", &apply_lut_cuda); }

}  // namespace unseen_fast
