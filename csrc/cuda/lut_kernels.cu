// CUDA kernel of apply_lut (uint8 pixels -> per-channel table entries), the
// normalization step of every loader on a GPU: one 1-byte read and one write
// per element, the table in shared memory. It replaces the indexing fallback
// (an int64 index eight times the batch, then a gather: about 20 bytes of
// traffic per pixel byte). Launchers only: checks are in lut_ops.cpp.
#include "kernel_launch.cuh"
#include "launch.h"

namespace unseen_fast::cuda {
namespace {

constexpr int kLutBlock = 256;
constexpr int kLutChunk = 16;              // elements per thread step: one 16-byte load of pixels
constexpr int kMaxSharedEntries = 256 * 4;  // tables of up to 4 channels live in shared memory
constexpr unsigned kMaxLutBlocks = 4096;    // the default cap: past it, a grid-stride loop

// The p-th 32-bit word of a chunk's output entries (little-endian), so the
// 16-byte stores are built in registers, never through a local array.
template <typename W>
__device__ inline unsigned output_word(const W (&o)[kLutChunk], int p) {
  if (sizeof(W) == 2) return static_cast<unsigned>(o[2 * p]) | (static_cast<unsigned>(o[2 * p + 1]) << 16);
  if (sizeof(W) == 4) return static_cast<unsigned>(o[p]);
  return static_cast<unsigned>(static_cast<unsigned long long>(o[p / 2]) >> (32 * (p % 2)));
}

// W: an unsigned integer as wide as a table entry (only bits are copied).
template <typename W, bool kShared>
__global__ void __launch_bounds__(kLutBlock) lut_kernel(const LutLaunch a, bool aligned) {
  __shared__ W shared_table[kShared ? kMaxSharedEntries : 1];
  const int channels = static_cast<int>(a.channels);  // 256 * channels < 2^31: checked by the launcher
  const W* table = static_cast<const W*>(a.table);
  if (kShared) {
    for (int i = threadIdx.x; i < 256 * channels; i += kLutBlock) shared_table[i] = table[i];
    __syncthreads();
    table = shared_table;
  }
  W* out = static_cast<W*>(a.out);
  const int64_t chunks = (a.count + kLutChunk - 1) / kLutChunk;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kLutBlock;
  for (int64_t chunk = static_cast<int64_t>(blockIdx.x) * kLutBlock + threadIdx.x; chunk < chunks; chunk += step) {
    const int64_t base = chunk * kLutChunk;
    const int valid = a.count - base < kLutChunk ? static_cast<int>(a.count - base) : kLutChunk;
    uint8_t v[kLutChunk];
    if (aligned && valid == kLutChunk) {
      const uint4 word = *reinterpret_cast<const uint4*>(a.pixels + base);
      const unsigned parts[4] = {word.x, word.y, word.z, word.w};
      for (int i = 0; i < kLutChunk; ++i) v[i] = static_cast<uint8_t>(parts[i / 4] >> (8 * (i % 4)));
    } else {
      for (int i = 0; i < kLutChunk; ++i) v[i] = i < valid ? a.pixels[base + i] : 0;
    }
    int c = static_cast<int>(base % channels);  // the channel of element base; then it cycles
    W o[kLutChunk];
    for (int i = 0; i < kLutChunk; ++i) {
      o[i] = table[v[i] * channels + c];
      c = c + 1 == channels ? 0 : c + 1;
    }
    if (aligned && valid == kLutChunk) {
      uint4* dst = reinterpret_cast<uint4*>(out + base);  // kLutChunk * sizeof(W) bytes: 2, 4 or 8 stores
      for (int i = 0; i < static_cast<int>(kLutChunk * sizeof(W) / 16); ++i)
        dst[i] = make_uint4(output_word(o, 4 * i), output_word(o, 4 * i + 1), output_word(o, 4 * i + 2),
                            output_word(o, 4 * i + 3));
    } else {
      for (int i = 0; i < kLutChunk; ++i)  // a constant bound: o stays in registers
        if (i < valid) out[base + i] = o[i];
    }
  }
}

template <typename W>
cudaError_t launch_width(const LutLaunch& a, cudaStream_t stream) {
  // 16-byte loads and stores need both bases aligned; every chunk then is
  // (pixels by 16 elements of 1 byte, the output by 16 entries of W).
  const bool aligned = reinterpret_cast<uintptr_t>(a.pixels) % 16 == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  const int64_t chunks = (a.count + kLutChunk - 1) / kLutChunk;
  const int64_t wanted = (chunks + kLutBlock - 1) / kLutBlock;
  const unsigned cap = a.max_blocks ? a.max_blocks : kMaxLutBlocks;
  const unsigned blocks = wanted < cap ? static_cast<unsigned>(wanted) : cap;
  if (256 * a.channels <= kMaxSharedEntries)
    return launch_kernel(lut_kernel<W, true>, blocks, kLutBlock, stream, a, aligned);
  return launch_kernel(lut_kernel<W, false>, blocks, kLutBlock, stream, a, aligned);
}

}  // namespace

cudaError_t launch_lut(const LutLaunch& a, cudaStream_t stream) noexcept {
  if (a.count == 0) return cudaSuccess;
  if (a.channels <= 0 || a.channels > INT32_MAX / 256) return cudaErrorInvalidValue;
  switch (a.entry_bytes) {
    case 2:
      return launch_width<uint16_t>(a, stream);
    case 4:
      return launch_width<uint32_t>(a, stream);
    case 8:
      return launch_width<unsigned long long>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace unseen_fast::cuda
