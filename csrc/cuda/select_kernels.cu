// CUDA kernels of select_topk: order-preserving keys, the radix-select
// histogram pass and the final classification. Launchers only (launch.h):
// the host side (select_ops.cpp) checks arguments and drives the passes.
// Integer atomics only, so counts do not depend on scheduling.
#include "../select_math.h"
#include "launch.h"

namespace unseen_fast::cuda {
namespace {

constexpr int kBlock = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kBlock - 1) / kBlock, 65535));
}

__device__ inline int64_t first_index() { return blockIdx.x * int64_t(kBlock) + threadIdx.x; }
__device__ inline int64_t grid_stride() { return int64_t(gridDim.x) * kBlock; }

template <typename F, typename K>
__global__ void keys_kernel(const F* scores, const bool* exclude, int64_t n, K* keys) {
  for (int64_t i = first_index(); i < n; i += grid_stride())
    keys[i] = (exclude && exclude[i]) ? K(0) : float_key(scores[i]);
}

// Counts keys that match their class's prefix under `mask`, by class and digit.
// labels == nullptr: one class, counted in shared memory first.
template <typename K>
__global__ void histogram_kernel(const K* keys, const int64_t* labels, int64_t n,
                                 const K* prefix, K mask, int shift,
                                 unsigned long long* hist) {
  __shared__ unsigned long long local[kRadixBuckets];
  for (int b = threadIdx.x; b < kRadixBuckets; b += kBlock) local[b] = 0;
  __syncthreads();
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const K key = keys[i];
    if (key == 0) continue;  // excluded
    const int64_t c = labels ? labels[i] : 0;
    if ((key & mask) != prefix[c]) continue;
    const int digit = static_cast<int>((key >> shift) & (kRadixBuckets - 1));
    if (labels) {
      atomicAdd(&hist[c * kRadixBuckets + digit], 1ull);
    } else {
      atomicAdd(&local[digit], 1ull);
    }
  }
  if (labels) return;
  __syncthreads();
  for (int b = threadIdx.x; b < kRadixBuckets; b += kBlock) atomicAdd(&hist[b], local[b]);
}

template <typename K>
__global__ void classify_kernel(const K* keys, const int64_t* labels, int64_t n,
                                const K* threshold, bool* above, bool* equal) {
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const K key = keys[i];
    const K t = threshold[labels ? labels[i] : 0];
    above[i] = key != 0 && key > t;
    equal[i] = key != 0 && key == t;
  }
}

template <typename F, typename K>
cudaError_t keys(const F* scores, const bool* exclude, int64_t n, K* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  keys_kernel<F, K><<<blocks_for(n), kBlock, 0, stream>>>(scores, exclude, n, out);
  return cudaGetLastError();
}

template <typename K>
cudaError_t histogram(const K* keys, const int64_t* labels, int64_t n, const K* prefix, K mask,
                      int shift, unsigned long long* hist, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  histogram_kernel<K><<<blocks_for(n), kBlock, 0, stream>>>(keys, labels, n, prefix, mask,
                                                            shift, hist);
  return cudaGetLastError();
}

template <typename K>
cudaError_t classify(const K* keys, const int64_t* labels, int64_t n, const K* threshold,
                     bool* above, bool* equal, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  classify_kernel<K><<<blocks_for(n), kBlock, 0, stream>>>(keys, labels, n, threshold, above,
                                                           equal);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_keys_f32(const float* scores, const bool* exclude, int64_t n, uint32_t* out,
                            cudaStream_t stream) noexcept {
  return keys(scores, exclude, n, out, stream);
}
cudaError_t launch_keys_f64(const double* scores, const bool* exclude, int64_t n, uint64_t* out,
                            cudaStream_t stream) noexcept {
  return keys(scores, exclude, n, out, stream);
}
cudaError_t launch_histogram_u32(const uint32_t* keys, const int64_t* labels, int64_t n,
                                 const uint32_t* prefix, uint32_t mask, int shift,
                                 unsigned long long* hist, cudaStream_t stream) noexcept {
  return histogram(keys, labels, n, prefix, mask, shift, hist, stream);
}
cudaError_t launch_histogram_u64(const uint64_t* keys, const int64_t* labels, int64_t n,
                                 const uint64_t* prefix, uint64_t mask, int shift,
                                 unsigned long long* hist, cudaStream_t stream) noexcept {
  return histogram(keys, labels, n, prefix, mask, shift, hist, stream);
}
cudaError_t launch_classify_u32(const uint32_t* keys, const int64_t* labels, int64_t n,
                                const uint32_t* threshold, bool* above, bool* equal,
                                cudaStream_t stream) noexcept {
  return classify(keys, labels, n, threshold, above, equal, stream);
}
cudaError_t launch_classify_u64(const uint64_t* keys, const int64_t* labels, int64_t n,
                                const uint64_t* threshold, bool* above, bool* equal,
                                cudaStream_t stream) noexcept {
  return classify(keys, labels, n, threshold, above, equal, stream);
}

}  // namespace unseen_fast::cuda
