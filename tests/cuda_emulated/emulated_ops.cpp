// The CUDA kernels of csrc/cuda/*.cu built by the C++ compiler on the CUDA
// emulation (csrc/cuda/emulate.h) and registered as CPU ops in the namespace
// unseen_fast_emulated, with the host code of the real CUDA ops up to the
// launch (launch_args.h). tests/test_cuda_emulated.py builds and checks them.
#include <torch/library.h>

#include "cuda/launch_args.h"
#include "cuda/loss_kernels.cu"
#include "cuda/lut_kernels.cu"
#include "cuda/score_kernels.cu"
#include "cuda/select_kernels.cu"

namespace {

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "the emulated CUDA ops take CPU tensors");
}

void check_launch(cudaError_t status) {
  TORCH_CHECK(status == cudaSuccess, "emulated launch failed with cudaError_t ", static_cast<int>(status), ": ",
              unseen_fast::emu::last_failure());
}

at::Tensor score(const at::Tensor& logits, const c10::optional<at::Tensor>& labels, at::IntArrayRef methods,
                 bool check_labels) {
  check_cpu(logits);
  const unseen_fast::cuda::ScoreCall call = unseen_fast::cuda::prepare_score(logits, labels, methods, check_labels);
  if (!call.empty()) check_launch(unseen_fast::cuda::launch_score(call.launch, nullptr));
  return call.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_with_stats(const at::Tensor& logits,
                                                                        const at::Tensor& labels,
                                                                        double label_smoothing, bool check_labels) {
  check_cpu(logits);
  const unseen_fast::cuda::LossCall call =
      unseen_fast::cuda::prepare_loss(logits, labels, label_smoothing, check_labels);
  if (logits.size(0) > 0) check_launch(unseen_fast::cuda::launch_loss(call.launch, nullptr));
  return {call.loss, call.stats, call.grad};
}

// max_blocks > 0 caps the grid, so small inputs exercise the grid-stride loop.
at::Tensor apply_lut(const at::Tensor& pixels, const at::Tensor& table, int64_t max_blocks) {
  check_cpu(pixels);
  unseen_fast::cuda::LutCall call = unseen_fast::cuda::prepare_lut(pixels, table);
  call.launch.max_blocks = static_cast<unsigned>(max_blocks);
  check_launch(unseen_fast::cuda::launch_lut(call.launch, nullptr));
  return call.out;
}

// The CUDA select_topk: with `precheck` the op's own path (check_select_args
// first); without it the kernels' recorded errors are read afterwards (what
// a caller that must not wait for the device would do later).
at::Tensor select_topk(const at::Tensor& scores, int64_t k, const c10::optional<at::Tensor>& labels, bool balanced,
                       const c10::optional<at::Tensor>& exclude, bool sorted, int64_t num_classes, bool precheck) {
  check_cpu(scores);
  if (precheck) {
    const unseen_fast::SelectFacts facts = unseen_fast::check_select_args(scores, k, labels, balanced, exclude);
    num_classes = std::max<int64_t>(facts.num_classes, 1);  // no samples: 0 classes
  }
  const unseen_fast::cuda::SelectCall call = unseen_fast::cuda::prepare_select(
      scores, k, labels.value_or(at::Tensor()), balanced, exclude.value_or(at::Tensor()), balanced ? num_classes : 1);
  if (k == 0 && precheck) return call.out;
  check_launch(unseen_fast::cuda::launch_select(call.launch, nullptr));
  if (!precheck) unseen_fast::check_select_errors(call.errors, labels, k, scores.size(0), num_classes);
  if (k == 0) return call.out;
  return sorted ? unseen_fast::cuda::by_descending_score(call.scores, call.out) : call.out;
}

// The CUDA select_topk_deferred as the op runs it: nothing read before the
// launch, the sort before anyone checks the recorded errors.
std::tuple<at::Tensor, at::Tensor> select_topk_deferred(const at::Tensor& scores, int64_t k,
                                                        const c10::optional<at::Tensor>& labels, bool balanced,
                                                        const c10::optional<at::Tensor>& exclude, bool sorted,
                                                        int64_t num_classes) {
  check_cpu(scores);
  const unseen_fast::cuda::SelectCall call =
      unseen_fast::cuda::prepare_deferred_select(scores, k, labels, balanced, exclude, num_classes);
  check_launch(unseen_fast::cuda::launch_select(call.launch, nullptr));
  return {sorted && k > 0 ? unseen_fast::cuda::by_descending_score(call.scores, call.out) : call.out, call.errors};
}

void set_order_seed(int64_t seed) { unseen_fast::emu::set_order_seed(static_cast<uint32_t>(seed)); }

// Three deliberately wrong kernels: the emulation must catch what they do.
// Each thread writes its slot of shared memory and reads its neighbour's;
// without the barrier some reads come before the neighbour's write.
template <bool kBarrier>
__global__ void rotate_kernel(const int* in, int* out) {
  __shared__ int slots[256];
  slots[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
  if (kBarrier) __syncthreads();
  out[blockIdx.x * 256 + threadIdx.x] = slots[(threadIdx.x + 1) % 256];
}

at::Tensor rotate(const at::Tensor& values, bool barrier) {
  TORCH_CHECK(values.scalar_type() == at::kInt && values.numel() % 256 == 0 && values.is_contiguous());
  at::Tensor out = at::full_like(values, -1);
  const unsigned blocks = static_cast<unsigned>(values.numel() / 256);
  check_launch(barrier ? unseen_fast::cuda::launch_kernel(rotate_kernel<true>, blocks, 256, nullptr,
                                                          values.const_data_ptr<int>(), out.data_ptr<int>())
                       : unseen_fast::cuda::launch_kernel(rotate_kernel<false>, blocks, 256, nullptr,
                                                          values.const_data_ptr<int>(), out.data_ptr<int>()));
  return out;
}

// A barrier inside a branch that only some threads take.
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 100) __syncthreads();
  out[threadIdx.x] = 1;
}

void divergent_barrier() {
  at::Tensor out = at::zeros({256}, at::kInt);
  check_launch(unseen_fast::cuda::launch_kernel(divergent_barrier_kernel, 1, 256, nullptr, out.data_ptr<int>()));
}

// A 16-byte load `offset` floats past a 16-byte boundary: the GPU faults.
__global__ void vector_load_kernel(const float* in, int offset, float* out) {
  const float4 q = __ldg(reinterpret_cast<const float4*>(in + offset));
  out[threadIdx.x] = q.x;
}

void vector_load(int64_t offset) {
  at::Tensor in = at::zeros({64}, at::kFloat), out = at::zeros({32}, at::kFloat);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(in.const_data_ptr()) % 16 == 0);
  check_launch(unseen_fast::cuda::launch_kernel(vector_load_kernel, 1, 32, nullptr, in.const_data_ptr<float>(),
                                                static_cast<int>(offset), out.data_ptr<float>()));
}

}  // namespace

TORCH_LIBRARY(unseen_fast_emulated, m) {
  m.def("score(Tensor logits, Tensor? labels, int[] methods, bool check_labels) -> Tensor", &score);
  m.def("cross_entropy_with_stats(Tensor logits, Tensor labels, float label_smoothing, bool check_labels)"
        " -> (Tensor, Tensor, Tensor)", &cross_entropy_with_stats);
  m.def("select_topk(Tensor scores, int k, Tensor? labels, bool balanced, Tensor? exclude, bool sorted,"
        " int num_classes, bool precheck) -> Tensor", &select_topk);
  m.def("select_topk_deferred(Tensor scores, int k, Tensor? labels, bool balanced, Tensor? exclude, bool sorted,"
        " int num_classes) -> (Tensor, Tensor)", &select_topk_deferred);
  m.def("apply_lut(Tensor pixels, Tensor table, int max_blocks) -> Tensor", &apply_lut);
  m.def("set_order_seed(int seed) -> ()", &set_order_seed);
  m.def("rotate(Tensor values, bool barrier) -> Tensor", &rotate);
  m.def("divergent_barrier() -> ()", &divergent_barrier);
  m.def("vector_load(int offset) -> ()", &vector_load);
}
