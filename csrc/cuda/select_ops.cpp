// Host side of the CUDA select_topk and normalize ops, compiled by the C++
// compiler. select_topk: the argument checks read every data-dependent fact
// in one host copy (the op's only host sync), then the radix-select kernels
// (select_kernels.cu), which never wait for the host; the result equals the
// CPU kernel's bit for bit (tests/test_cuda_emulated.py runs the same
// kernels and host code on the CPU).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launch_args.h"

namespace unseen_fast {
namespace {

at::Tensor select_topk_cuda(const at::Tensor& scores, int64_t k,
                            const c10::optional<at::Tensor>& labels, bool balanced,
                            const c10::optional<at::Tensor>& exclude, bool sorted) {
  const SelectFacts facts = check_select_args(scores, k, labels, balanced, exclude);
  const c10::cuda::CUDAGuard guard(scores.device());
  const cuda::SelectCall call = cuda::prepare_select(scores, k, labels.value_or(at::Tensor()), balanced,
                                                     exclude.value_or(at::Tensor()),
                                                     balanced ? std::max<int64_t>(facts.num_classes, 1) : 1);  // no samples: 0 classes
  if (k == 0) return call.out;
  C10_CUDA_CHECK(cuda::launch_select(call.launch, c10::cuda::getCurrentCUDAStream()));
  return sorted ? cuda::by_descending_score(call.scores, call.out) : call.out;
}

std::tuple<at::Tensor, at::Tensor> select_topk_deferred_cuda(const at::Tensor& scores, int64_t k,
                                                              const c10::optional<at::Tensor>& labels, bool balanced,
                                                              const c10::optional<at::Tensor>& exclude, bool sorted,
                                                              int64_t num_classes) {
  const cuda::SelectCall call = cuda::prepare_deferred_select(scores, k, labels, balanced, exclude, num_classes);
  const c10::cuda::CUDAGuard guard(scores.device());  // after the checks, as in every op here
  C10_CUDA_CHECK(cuda::launch_select(call.launch, c10::cuda::getCurrentCUDAStream()));
  return {sorted && k > 0 ? cuda::by_descending_score(call.scores, call.out) : call.out, call.errors};
}

at::Tensor normalize_cuda(const at::Tensor& scores) {
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
              "normalize: scores must be float32 or float64, got ", scores.scalar_type());
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor wide = scores.to(at::kDouble);
  // ATen's CUDA reduction uses a fixed tree (no float atomics): same total each run.
  const double total = wide.sum().item<double>();
  check_normalize_total(scores, total);
  return wide.div(total).to(scores.scalar_type());  // not div_: for float64 input `wide` is the caller's tensor
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) {
  m.impl("select_topk", &select_topk_cuda);
  m.impl("select_topk_deferred", &select_topk_deferred_cuda);
  m.impl("normalize", &normalize_cuda);
}

}  // namespace unseen_fast
