// The boundary between host C++ and nvcc-compiled code. The .cu files export
// only these noexcept launchers: they take raw pointers and sizes, enqueue
// kernels on the given stream and return the launch's cudaError_t. Every
// argument check, allocation and TORCH_CHECK lives in the host files
// (*_ops.cpp) compiled by the C++ compiler, so no C++ exception is ever
// thrown inside (or through) nvcc-compiled code. No ATen here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../score_math.h"
#include "../select_math.h"

namespace unseen_fast::cuda {

enum class Element : int { kFloat32, kBFloat16, kFloat16 };

// score: up to kMaxScoreMethods method codes, 4 bits each (codes < 16).
constexpr int kMaxScoreMethods = 16;

// Rows of at most this many columns get one thread each (row_reduce.cuh).
constexpr int kOneThreadMaxCols = 16;

struct ScoreLaunch {
  const void* logits;
  Element element;
  int64_t rows, cols, row_stride, col_stride;  // in elements
  bool aligned;           // rows can be read with 16-byte loads (row_reduce.cuh)
  bool tiled;             // one contiguous 16-byte aligned [rows, <= kOneThreadMaxCols] block: staged through shared memory
  const int64_t* labels;  // [rows] or nullptr; out-of-range labels give NaN
  uint64_t methods;       // method j = (methods >> 4j) & 15
  int num_methods;
  float* out;             // [rows, num_methods], contiguous
};

cudaError_t launch_score(const ScoreLaunch& args, cudaStream_t stream) noexcept;

// cross_entropy_with_stats: per row the loss, kNumLossStats statistics and
// the gradient d loss / d logits (float32, or bfloat16 for bfloat16 logits).
struct LossLaunch {
  const void* logits;
  Element element;
  int64_t rows, cols, row_stride, col_stride;  // in elements
  bool aligned;           // rows can be read with 16-byte loads (row_reduce.cuh)
  const int64_t* labels;  // [rows]; out-of-range labels give a NaN row
  LossTarget target;      // loss_target(label_smoothing, cols)
  float* loss;            // [rows]
  float* stats;           // [rows, kNumLossStats], contiguous
  void* grad;             // [rows, cols], contiguous
};

cudaError_t launch_loss(const LossLaunch& args, cudaStream_t stream) noexcept;

// select_topk as a radix select that never waits for the host: every sample
// gets a unique 128-bit key (the score's order key, then the bitwise NOT of
// its index, so ties go to the lowest index), 11-bit digits from the top
// pick each group's quota-th largest key on the device, and a scan compacts
// the winners in index order. Groups: the classes when balanced, else one.
// Bad input is recorded in `errors` (select_math.h: SelectError), never
// raised here.
struct SelectGroup {  // device workspace, one per group
  uint64_t prefix_hi, prefix_lo;  // the key bits found so far; the threshold at the end
  int64_t need;                   // how many of the keys under the prefix are still wanted
  int64_t quota;                  // how many the group takes (largest remainder when balanced)
  int64_t count;                  // its eligible samples
};

constexpr int kSelectTile = 2048;  // samples per block in the compaction

struct SelectLaunch {
  const void* scores;
  bool is_double;         // float64 scores, else float32
  int64_t n, k;
  const bool* exclude;    // [n] or nullptr
  const int64_t* labels;  // [n] or nullptr
  bool balanced;          // per-group quotas over the labels (labels required)
  int64_t groups;         // number of classes when balanced, else 1
  unsigned* hist;         // [groups, 2048] workspace
  SelectGroup* group;     // [groups] workspace
  unsigned* tile_counts;  // [tiles(n)] workspace
  int64_t* errors;        // [kNumSelectErrors]
  int64_t* out;           // [k]: the winners in ascending index order
};

C10_HOST_DEVICE inline int64_t select_tiles(int64_t n) { return (n + kSelectTile - 1) / kSelectTile; }

cudaError_t launch_select(const SelectLaunch& args, cudaStream_t stream) noexcept;

// apply_lut: out[i] = table[pixels[i] * channels + i % channels] over the
// flat, contiguous pixels. The lookup copies table entries, so the kernel
// moves bits of the entry's width (2, 4 or 8 bytes) whatever the dtype.
struct LutLaunch {
  const uint8_t* pixels;  // [count], contiguous
  int64_t count;          // elements (pixels x channels)
  int64_t channels;
  const void* table;      // [256, channels], contiguous
  int entry_bytes;        // 2, 4 or 8
  void* out;              // [count], contiguous
  unsigned max_blocks;    // the grid's cap (past it, a grid-stride loop); 0: the default
};

cudaError_t launch_lut(const LutLaunch& args, cudaStream_t stream) noexcept;

}  // namespace unseen_fast::cuda
