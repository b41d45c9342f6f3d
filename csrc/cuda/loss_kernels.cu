// CUDA kernel of cross_entropy_with_stats, as Liger-Kernel's cross-entropy:
// the row state (row_reduce.cuh), then a second sweep over the row's chunks
// (from L1 / L2; 16-byte loads and stores where aligned) writes the
// gradient softmax(z) - target and sums z - max for label smoothing; lane 0 writes the loss and the statistics with the formulas of
// score_math.h shared with the CPU kernel. Backward is then a scale.
// Launchers only: checks are in loss_ops.cpp.
#include "launch.h"
#include "row_reduce.cuh"

namespace unseen_fast::cuda {
namespace {

__device__ inline void store(float* out, float g) { *out = g; }
__device__ inline void store(__nv_bfloat16* out, float g) { *out = __float2bfloat16_rn(g); }

// A chunk of V gradients with 16-byte stores (g 16-byte aligned).
__device__ inline void store_chunk(float* g, const float (&v)[4]) {
  *reinterpret_cast<float4*>(g) = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ inline void store_chunk(float* g, const float (&v)[8]) {  // float16 logits, float32 gradient
  reinterpret_cast<float4*>(g)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(g)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// Two bfloat16 in one word, the earlier column in the lower half (little-endian).
__device__ inline unsigned pack(float a, float b) {
  return static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
         (static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
}

__device__ inline void store_chunk(__nv_bfloat16* g, const float (&v)[8]) {
  *reinterpret_cast<uint4*>(g) = make_uint4(pack(v[0], v[1]), pack(v[2], v[3]), pack(v[4], v[5]), pack(v[6], v[7]));
}

template <typename T, typename G, int TPR, int kChunks, bool kUnitStride>
__global__ void __launch_bounds__(kBlock, kMinBlocks) loss_kernel(const LossLaunch a) {
  const RowThread<TPR> t(a.rows);
  const T* r = static_cast<const T*>(a.logits) + (t.active ? t.row : 0) * a.row_stride;
  const SoftmaxState s = row_state<T, TPR, kChunks, kUnitStride>(t, r, a.cols, a.col_stride, a.aligned);
  int64_t label = -1;
  float label_logit = 0.f;
  if (t.active) {
    const int64_t y = a.labels[t.row];
    if (y >= 0 && y < a.cols) {  // out of range (check_labels=False): a NaN row
      label = y;
      label_logit = to_float(r[y * a.col_stride]);
    }
  }
  const LossRow lr = loss_row(s, label, a.target);
  float sum_d = 0.f;
  if (t.active) {
    // the chunks of row_state, in its order, on every load path (so strided
    // and contiguous rows sum z - max in the same order: the same bits); one
    // chunk at a time: the row is re-read from L1 / L2, and a fold's worth
    // of loads here spilled in the strided 16-bit kernels (default launch
    // bounds) and made the loop longer
    constexpr int V = kChunk<T>;
    G* g = static_cast<G*>(a.grad) + t.row * a.cols;
    const bool store_aligned =
        (a.cols * sizeof(G)) % 16 == 0 && reinterpret_cast<uintptr_t>(a.grad) % 16 == 0;
    constexpr int64_t kStep = static_cast<int64_t>(TPR) * V;
    // a chunk's gradients in place; `valid` leaves the -inf padding of the
    // tail out of sum_d (the label's column is rewritten below)
    const auto gradients = [&](float (&v)[V], int valid) {
      for (int i = 0; i < V; ++i) {
        if (i < valid) sum_d += v[i] - lr.max;
        v[i] = loss_gradient(lr, v[i], false);
      }
    };
    int64_t base = static_cast<int64_t>(t.lane) * V;
    if (kUnitStride && a.aligned && store_aligned) {
      // whole chunks: 16-byte loads and stores, no guards (the loop's
      // length is what an iteration issues: tests/test_cuda_build.py)
      for (; base <= a.cols - V; base += kStep) {
        float v[V];
        load_chunk_at<T, true, true>(r, base, a.cols, a.col_stride, a.aligned, v);
        gradients(v, V);
        store_chunk(g + base, v);
      }
    }
    for (; base < a.cols; base += kStep) {  // the rest: the same chunks, guarded
      const int valid = a.cols - base < V ? static_cast<int>(a.cols - base) : V;  // 64-bit: C may be close to 2^31
      float v[V];
      load_chunk_at<T, kUnitStride>(r, base, a.cols, a.col_stride, a.aligned, v);
      gradients(v, valid);
      if (store_aligned && valid == V) {
        store_chunk(g + base, v);
      } else {
        for (int i = 0; i < V; ++i)  // constant bounds: unrolled, no loop over a count the compiler cannot bound
          if (i < valid) store(g + base + i, v[i]);
      }
    }
    // the thread that stored the label's column writes it again with the
    // target's 1 - eps: no 64-bit label test per logit in the sweep
    if (label >= 0 && (label / V) % TPR == t.lane) store(g + label, loss_gradient(lr, label_logit, true));
  }
  sum_d = row_sum<TPR>(sum_d, t.lane);  // every thread joins the reduction
  if (!t.active || t.lane != 0) return;
  a.loss[t.row] = loss_and_stats(s, label, label_logit, a.target, sum_d / static_cast<float>(a.cols),
                                 a.stats + t.row * kNumLossStats);
}

template <typename T, typename G, bool kUnitStride>
cudaError_t launch_typed(const LossLaunch& a, cudaStream_t stream) {
  return launch_by_width<T>(a.cols, [&](auto tpr, auto chunks) {
    constexpr int TPR = decltype(tpr)::value;
    return launch_kernel(loss_kernel<T, G, TPR, decltype(chunks)::value, kUnitStride>, blocks_for<TPR>(a.rows),
                         kBlock, stream, a);
  });
}

template <typename T, typename G>
cudaError_t launch_typed(const LossLaunch& a, cudaStream_t stream) {
  return a.col_stride == 1 ? launch_typed<T, G, true>(a, stream) : launch_typed<T, G, false>(a, stream);
}

}  // namespace

cudaError_t launch_loss(const LossLaunch& a, cudaStream_t stream) noexcept {
  if (a.rows == 0) return cudaSuccess;
  if (a.rows > INT32_MAX) return cudaErrorInvalidValue;
  switch (a.element) {  // the gradient's dtype: loss_gradient_dtype in checks.h
    case Element::kFloat32:
      return launch_typed<float, float>(a, stream);
    case Element::kBFloat16:
      return launch_typed<__nv_bfloat16, __nv_bfloat16>(a, stream);
    case Element::kFloat16:
      return launch_typed<__half, float>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unseen_fast::cuda
