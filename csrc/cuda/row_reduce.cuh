// Device helpers shared by the score and loss kernels: TPR threads own one
// row (1, 8, 32 or 256), each folds its 16-byte chunks of it into a
// SoftmaxState (score_math.h), and the states are merged by warp shuffles,
// plus shared memory for 256-thread rows. Every thread of the row ends with
// the whole row's state, merged in the same order (so all agree bit for
// bit). Everything by value in registers: the ptxas test fails on a stack
// frame or a spill.
#pragma once

#include "kernel_launch.cuh"  // first: under emulation it defines the CUDA built-ins

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../score_math.h"
#include "launch.h"

namespace unseen_fast::cuda {

constexpr int kBlock = 256;
// Blocks of the row kernels per SM that __launch_bounds__ asks ptxas to fit
// (at most 80 registers a thread, 768 threads resident). With the folds and
// no minimum, ptxas chose 48 registers for two bfloat16 loss kernels on
// sm_80 and spilled; with 4 blocks (64 registers) the strided 256-thread
// kernels spilled.
constexpr int kMinBlocks = 3;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ inline float to_float(__half x) { return __half2float(x); }

__device__ inline SoftmaxState shfl_xor(const SoftmaxState& s, int lane_mask, int width) {
  SoftmaxState o;
  o.max = __shfl_xor_sync(0xffffffffu, s.max, lane_mask, width);
  o.argmax = __shfl_xor_sync(0xffffffffu, static_cast<long long>(s.argmax), lane_mask, width);
  o.second = __shfl_xor_sync(0xffffffffu, s.second, lane_mask, width);
  o.rest_sum = __shfl_xor_sync(0xffffffffu, s.rest_sum, lane_mask, width);
  o.rest_sq = __shfl_xor_sync(0xffffffffu, s.rest_sq, lane_mask, width);
  o.ent_term = __shfl_xor_sync(0xffffffffu, s.ent_term, lane_mask, width);
  o.nan = __shfl_xor_sync(0xffffffffu, static_cast<int>(s.nan), lane_mask, width) != 0;
  return o;
}

// Rows of TPR threads in a block of kBlock: which row and which lane.
template <int TPR>
struct RowThread {
  static constexpr int kWarp = TPR < 32 ? TPR : 32;  // shuffle width
  int lane;
  int64_t row;
  bool active;  // inactive threads (past the last row) still join the shuffles
  __device__ RowThread(int64_t rows)
      : lane(static_cast<int>(threadIdx.x % TPR)),
        row(static_cast<int64_t>(blockIdx.x) * (kBlock / TPR) + threadIdx.x / TPR),
        active(row < rows) {}
};

// 16-byte loads: kChunk<T> logits each, widened to float exactly (bfloat16
// and float16 by bit moves, no reinterpretation through memory).
template <typename T>
constexpr int kChunk = 16 / static_cast<int>(sizeof(T));

__device__ inline void unpack(const float4 q, float (&v)[4]) { v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w; }

// Two 16-bit logits of one 32-bit word; little-endian: the lower half is the
// earlier column.
__device__ inline void widen(unsigned w, __nv_bfloat16, float& a, float& b) {
  a = __uint_as_float(w << 16);
  b = __uint_as_float(w & 0xFFFF0000u);
}

__device__ inline void widen(unsigned w, __half, float& a, float& b) {
  a = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu)));
  b = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
}

template <typename T>  // bfloat16 or float16
__device__ inline void unpack(const uint4 q, T, float (&v)[8]) {
  widen(q.x, T{}, v[0], v[1]);
  widen(q.y, T{}, v[2], v[3]);
  widen(q.z, T{}, v[4], v[5]);
  widen(q.w, T{}, v[6], v[7]);
}

// One 16-byte chunk from global memory (read-only path).
__device__ inline void load_chunk(const float* p, float (&v)[4]) { unpack(__ldg(reinterpret_cast<const float4*>(p)), v); }

template <typename T>
__device__ inline void load_chunk(const T* p, float (&v)[8]) { unpack(__ldg(reinterpret_cast<const uint4*>(p)), T{}, v); }

// kBytes (4 or 8) from shared memory as kBytes / sizeof(T) logits, widened
// to float as load_chunk does. p must be kBytes-aligned: the emulation stops
// the launch where it is not, as the GPU would.
template <int kBytes> struct SharedWords;  // a vector of kBytes / 4 32-bit words
template <> struct SharedWords<4> { using type = unsigned; };
template <> struct SharedWords<8> { using type = uint2; };

template <int kBytes, typename T>
__device__ inline void load_shared_piece(const T* p, float (&v)[kBytes / sizeof(T)]) {
  using Words = typename SharedWords<kBytes>::type;
#ifdef UNSEEN_FAST_EMULATE_CUDA
  emu::check_aligned(p, kBytes);
#endif
  const Words q = *reinterpret_cast<const Words*>(p);
  unsigned w[kBytes / 4];
  memcpy(w, &q, kBytes);  // register moves
  for (int i = 0; i < kBytes / 4; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      v[i] = __uint_as_float(w[i]);
    } else {
      widen(w[i], T{}, v[2 * i], v[2 * i + 1]);
    }
  }
}

// A tile row of `cols` (<= N) logits from shared memory into v[N], -inf past
// the row, read with the widest loads its pitch allows. The lanes of a warp
// read rows a pitch apart: one scalar load per logit of a 40-byte float32 row
// (C = 10) meets two lanes to a bank, 8-byte loads (LDS.64, half a warp per
// wavefront) none, and a 20-byte bfloat16 row is 5 conflict-free 4-byte
// words instead of 10 16-bit loads. Pitches of 16-byte multiples never come
// here (launch_args.h: rows_form_tiles) and would take the 8-byte path.
template <int kBytes, typename T, int N>
__device__ inline void load_tile_pieces(const T* r, int cols, float (&v)[N]) {
  constexpr int P = kBytes / static_cast<int>(sizeof(T));  // logits per load
  static_assert(N % P == 0, "whole pieces");
  for (int p = 0; p < N / P; ++p) {
    float c[P];
    if (p * P < cols) {  // the pitch is a multiple of kBytes: a piece is all in or all out
      load_shared_piece<kBytes>(r + p * P, c);
    } else {
      for (int i = 0; i < P; ++i) c[i] = neg_inf();
    }
    for (int i = 0; i < P; ++i) v[p * P + i] = c[i];
  }
}

template <typename T, int N>
__device__ inline void load_tile_row(const T* r, int cols, float (&v)[N]) {
  const int pitch = cols * static_cast<int>(sizeof(T));
  if (pitch % 8 == 0) {
    load_tile_pieces<8>(r, cols, v);
  } else if (sizeof(T) == 2 && pitch % 4 == 0) {
    load_tile_pieces<4>(r, cols, v);
  } else {
    for (int i = 0; i < N; ++i) v[i] = i < cols ? to_float(r[i]) : neg_inf();
  }
}

// What one thread holds of its row at a time: kFoldChunks 16-byte chunks,
// all loaded before any is used (64 bytes in flight per thread), i.e.
// kFoldValues<T> logits (16 float32, 32 16-bit ones), folded by one
// fold_values (one state merge per fold, not per chunk).
constexpr int kFoldChunks = 4;
template <typename T>
constexpr int kFoldValues = kFoldChunks * kChunk<T>;

// The chunk of row r at columns b .. b + kChunk<T> - 1; columns past the row
// read as -inf (fold_values adds nothing for them). kUnitStride: adjacent
// columns; `aligned` (launch_args.h, rows_are_aligned): a 16-byte load,
// else scalar loads. kWhole: the caller knows the chunk is inside an aligned
// unit-stride row, so a 16-byte load with no test.
template <typename T, bool kUnitStride, bool kWhole = false>
__device__ inline void load_chunk_at(const T* r, int64_t b, int64_t cols, int64_t col_stride, bool aligned,
                                     float (&c)[kChunk<T>]) {
  static_assert(!kWhole || kUnitStride, "whole chunks are read with 16-byte loads");
  if (kWhole || (kUnitStride && aligned && b + kChunk<T> <= cols)) {
    load_chunk(r + b, c);
  } else {
    for (int i = 0; i < kChunk<T>; ++i)
      c[i] = b + i < cols ? to_float(kUnitStride ? r[b + i] : r[(b + i) * col_stride]) : neg_inf();
  }
}

// One fold's logits: chunk u < kChunks at columns base + u * step ...,
// all loaded before any is used.
template <typename T, int kChunks, bool kUnitStride, bool kWhole = false>
__device__ inline void load_fold(const T* r, int64_t base, int64_t step, int64_t cols, int64_t col_stride,
                                 bool aligned, float (&v)[kChunks * kChunk<T>]) {
  constexpr int V = kChunk<T>;
  for (int u = 0; u < kChunks; ++u) {
    float c[V];
    load_chunk_at<T, kUnitStride, kWhole>(r, base + u * step, cols, col_stride, aligned, c);
    for (int i = 0; i < V; ++i) v[u * V + i] = c[i];
  }
}

// The whole row's state in every thread of the row. Thread `lane` owns the
// chunks lane, lane + TPR, ... of kChunk<T> adjacent logits (a warp reads
// 512 contiguous bytes per chunk) and folds them kChunks at a time, in
// column order; every load path reads the same values into the same folds
// (strided rows give the bits of contiguous ones). kChunks is kFoldChunks,
// or for one-thread rows the row's length in chunks (launch_by_width): the
// row is then one fold without -inf padding chunks, which add exactly 0,
// so the bits are those of a whole fold. All threads of the block must
// call it.
template <typename T, int TPR, int kChunks, bool kUnitStride>
__device__ SoftmaxState row_state(const RowThread<TPR>& t, const T* r, int64_t cols, int64_t col_stride,
                                  bool aligned) {
  static_assert(kChunks == kFoldChunks || TPR == 1, "shorter folds only for one-thread rows");
  constexpr int V = kChunk<T>;
  constexpr int kValues = kChunks * V;
  constexpr int64_t kStep = static_cast<int64_t>(TPR) * V;  // columns from one of a thread's chunks to the next
  constexpr int64_t kFoldStep = kChunks * kStep;  // columns from one of a thread's folds to the next
  SoftmaxState s = empty_state();
  if (t.active) {
    int64_t base = static_cast<int64_t>(t.lane) * V;
    if (kUnitStride && aligned) {
      // Whole folds: every chunk inside the row, 16-byte loads, no guards;
      // its only branches skip rare rows (NaN, +-inf), so the loop's length
      // is what an iteration issues (tests/test_cuda_build.py reads it).
      const int64_t last_whole = cols - (kChunks - 1) * kStep - V;  // the last base of a whole fold
      for (; base <= last_whole; base += kFoldStep) {
        float v[kValues];
        load_fold<T, kChunks, true, true>(r, base, kStep, cols, col_stride, aligned, v);
        s = merge(s, fold_values<kValues, V>(v, base, kStep));
      }
    }
    // the rest (at most one fold of a row read with 16-byte loads; every
    // fold of other rows): the same folds with guarded loads, the same bits
    for (; base < cols; base += kFoldStep) {
      float v[kValues];
      load_fold<T, kChunks, kUnitStride>(r, base, kStep, cols, col_stride, aligned, v);
      s = merge(s, fold_values<kValues, V>(v, base, kStep));
    }
  }
  // xor butterfly: every lane ends with its warp's (part of the) row state
  for (int offset = RowThread<TPR>::kWarp / 2; offset > 0; offset /= 2)
    s = merge(s, shfl_xor(s, offset, RowThread<TPR>::kWarp));
  if constexpr (TPR > 32) {  // a block per row: warps meet in shared memory
    __shared__ SoftmaxState warp_states[TPR / 32];
    if (t.lane % 32 == 0) warp_states[t.lane / 32] = s;
    __syncthreads();
    s = warp_states[0];
    for (int w = 1; w < TPR / 32; ++w) s = merge(s, warp_states[w]);
  }
  return s;
}

// The row's sum of one float per thread, in every thread of the row.
template <int TPR>
__device__ float row_sum(float v, int lane) {
  for (int offset = RowThread<TPR>::kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset, RowThread<TPR>::kWarp);
  if constexpr (TPR > 32) {
    __shared__ float warp_sums[TPR / 32];
    if (lane % 32 == 0) warp_sums[lane / 32] = v;
    __syncthreads();
    v = 0.f;
    for (int w = 0; w < TPR / 32; ++w) v += warp_sums[w];
  }
  return v;
}

template <int TPR>
inline unsigned blocks_for(int64_t rows) {
  constexpr int64_t kRowsPerBlock = kBlock / TPR;
  return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
}

template <int N>
using Int = std::integral_constant<int, N>;

// One-thread rows (cols <= kOneThreadMaxCols): launch(Int<1>, Int<chunks>)
// with the fewest 16-byte chunks of T that hold the row, so a thread folds
// its row's length, not a whole fold (C = 10: 12 float32 or 16 bfloat16
// values instead of 16 or 32, the padding being most of the work).
template <typename T, int kChunks = 1, typename Launch>
cudaError_t launch_one_thread_rows(int64_t cols, Launch&& launch) {
  static_assert(kOneThreadMaxCols <= kFoldValues<T>, "a one-thread row is at most one fold");
  if constexpr (kChunks * kChunk<T> < kOneThreadMaxCols) {
    if (cols > kChunks * kChunk<T>) return launch_one_thread_rows<T, kChunks + 1>(cols, launch);
  }
  return launch(Int<1>{}, Int<kChunks>{});
}

// Calls launch(Int<TPR>, Int<chunks per fold>) with the threads per row for
// C classes of T. A few classes: one thread per row, no shuffles (8 threads
// sharing a 40-byte row spent most of their time merging states).
template <typename T, typename Launch>
cudaError_t launch_by_width(int64_t cols, Launch&& launch) {
  if (cols <= kOneThreadMaxCols) return launch_one_thread_rows<T>(cols, launch);
  if (cols <= 64) return launch(Int<8>{}, Int<kFoldChunks>{});
  if (cols <= 2048) return launch(Int<32>{}, Int<kFoldChunks>{});
  return launch(Int<256>{}, Int<kFoldChunks>{});
}

}  // namespace unseen_fast::cuda
