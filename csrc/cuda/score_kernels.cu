// CUDA kernels of score: TPR threads per row (row_reduce.cuh) build the
// row's SoftmaxState with the shared online merge, then lanes write the
// row's outputs side by side with the same finalize as the CPU kernel
// (score_math.h); few contiguous columns go through a shared-memory tile. Method codes are unpacked from one 64-bit word (no
// dynamically indexed list in local memory). Launchers only: checks are in
// score_ops.cpp.
#include "launch.h"
#include "row_reduce.cuh"

namespace unseen_fast::cuda {
namespace {

template <typename T, int TPR, int kChunks, bool kUnitStride>
__global__ void __launch_bounds__(kBlock, kMinBlocks) score_kernel(const ScoreLaunch a) {
  const RowThread<TPR> t(a.rows);
  const T* r = static_cast<const T*>(a.logits) + (t.active ? t.row : 0) * a.row_stride;
  const SoftmaxState s = row_state<T, TPR, kChunks, kUnitStride>(t, r, a.cols, a.col_stride, a.aligned);
  if (!t.active) return;
  int64_t label = -1;
  float label_logit = 0.f;
  if (a.labels != nullptr) {
    const int64_t y = a.labels[t.row];
    if (y >= 0 && y < a.cols) {  // out of range: the label methods give NaN
      label = y;
      label_logit = to_float(r[y * a.col_stride]);
    }
  }
  for (int j = t.lane; j < a.num_methods; j += RowThread<TPR>::kWarp) {
    const int64_t method = static_cast<int64_t>((a.methods >> (4 * j)) & 15u);
    a.out[t.row * a.num_methods + j] = finalize(s, method, label, label_logit);
  }
}

// C <= kOneThreadMaxCols, contiguous rows whose pitch is not a multiple of
// 16 bytes (launch_args.h: rows_form_tiles): with one thread per row a
// warp's loads would land 4C bytes apart (rows of 40 bytes are not even
// 16-byte aligned, so one scalar load per logit). Instead the block copies
// its rows, one contiguous tile, into shared memory with 16-byte loads; each
// thread reads its row from there as wide as its pitch allows and folds
// kRowChunks chunks, the row's length rounded up to a chunk (C = 10: 12
// float32 or 16 bfloat16 values, not a whole fold's 16 or 32: the padding
// was most of the work); the outputs leave through the same buffer,
// coalesced. The bits are row_state<T, 1, kRowChunks>'s.
template <typename T, int kRowChunks>
__global__ void __launch_bounds__(kBlock) score_tile_kernel(const ScoreLaunch a) {
  constexpr int V = kChunk<T>;
  constexpr int kValues = kRowChunks * V;
  static_assert(kValues <= kFoldValues<T>, "a row is at most one fold");
  // The rows (256 x 16 x 4 bytes at most), then the outputs at an odd pitch
  // (a warp's writes of one method land in 32 different banks): 17 KB.
  constexpr int kTileWords = kBlock * (kMaxScoreMethods + 1);
  static_assert(kBlock * kOneThreadMaxCols <= kTileWords, "the rows fit the buffer");
  __shared__ uint4 tile[kTileWords * sizeof(float) / sizeof(uint4)];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBlock;
  const int rows_here = static_cast<int>(a.rows - row0 < kBlock ? a.rows - row0 : kBlock);
  const int cols = static_cast<int>(a.cols);
  const int elements = rows_here * cols;
  const T* src = static_cast<const T*>(a.logits) + row0 * cols;
  T* rows = reinterpret_cast<T*>(tile);
  for (int i = threadIdx.x; i < elements / V; i += kBlock) tile[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
  for (int e = elements / V * V + threadIdx.x; e < elements; e += kBlock) rows[e] = src[e];
  __syncthreads();
  const bool active = static_cast<int>(threadIdx.x) < rows_here;
  SoftmaxState s = empty_state();
  int64_t label = -1;
  float label_logit = 0.f;
  if (active) {
    const T* r = rows + threadIdx.x * cols;
    float v[kValues];
    load_tile_row(r, cols, v);
    s = merge(s, fold_values<kValues, V>(v, 0, V));
    if (a.labels != nullptr) {
      const int64_t y = a.labels[row0 + threadIdx.x];
      if (y >= 0 && y < cols) {  // out of range: the label methods give NaN
        label = y;
        label_logit = to_float(r[y]);
      }
    }
  }
  __syncthreads();  // every row is folded: the buffer takes the outputs
  float* outs = reinterpret_cast<float*>(tile);
  const int methods = a.num_methods, pitch = methods | 1;
  if (active) {
    for (int j = 0; j < methods; ++j) {
      const int64_t method = static_cast<int64_t>((a.methods >> (4 * j)) & 15u);
      outs[threadIdx.x * pitch + j] = finalize(s, method, label, label_logit);
    }
  }
  __syncthreads();
  float* out = a.out + row0 * methods;
  for (int e = threadIdx.x; e < rows_here * methods; e += kBlock) {
    const int row = e / methods;
    out[e] = outs[row * pitch + (e - row * methods)];
  }
}

template <typename T, bool kUnitStride>
cudaError_t launch_typed(const ScoreLaunch& a, cudaStream_t stream) {
  if (a.tiled) {
    return launch_one_thread_rows<T>(a.cols, [&](auto, auto chunks) {
      return launch_kernel(score_tile_kernel<T, decltype(chunks)::value>, blocks_for<1>(a.rows), kBlock, stream, a);
    });
  }
  return launch_by_width<T>(a.cols, [&](auto tpr, auto chunks) {
    constexpr int TPR = decltype(tpr)::value;
    return launch_kernel(score_kernel<T, TPR, decltype(chunks)::value, kUnitStride>, blocks_for<TPR>(a.rows),
                         kBlock, stream, a);
  });
}

template <typename T>
cudaError_t launch_typed(const ScoreLaunch& a, cudaStream_t stream) {
  return a.col_stride == 1 ? launch_typed<T, true>(a, stream) : launch_typed<T, false>(a, stream);
}

}  // namespace

cudaError_t launch_score(const ScoreLaunch& a, cudaStream_t stream) noexcept {
  if (a.rows == 0 || a.num_methods == 0) return cudaSuccess;
  if (a.rows > INT32_MAX || a.num_methods > kMaxScoreMethods) return cudaErrorInvalidValue;
  switch (a.element) {
    case Element::kFloat32:
      return launch_typed<float>(a, stream);
    case Element::kBFloat16:
      return launch_typed<__nv_bfloat16>(a, stream);
    case Element::kFloat16:
      return launch_typed<__half>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unseen_fast::cuda
