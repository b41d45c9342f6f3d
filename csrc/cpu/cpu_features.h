// Which CPU score path runs: the AVX-512 two-sweep kernel when the CPU has
// it, else the AVX2 one, else the portable online-merge loop (below). Tests
// switch between them to cover every path the machine can run.
#pragma once

#include <cstdint>

#include "../score_math.h"

namespace unseen_fast {

// Ordered: a CPU that runs a path runs every path below it.
enum class CpuPath : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

bool cpu_has_avx512();
bool cpu_has_avx2();
CpuPath best_cpu_path();        // what this CPU can run
CpuPath cpu_path();             // what runs now
// Asks for `path`; returns the path in use after the call (never above
// best_cpu_path(), whatever was asked).
CpuPath set_cpu_path(CpuPath path);
const char* cpu_path_name(CpuPath path);
CpuPath cpu_path_from_name(const char* name);  // throws std::invalid_argument for an unknown name
// The older switch: true = the best path, false = portable; returns whether
// a vector path is in use.
bool set_cpu_simd(bool enabled);
bool cpu_simd_enabled();

// The portable path's row state: push per logit. On a CPU the merge's
// branches predict well: 1.3x faster than two-pass folds of chunks of 8
// (measured with fold_chunk, fold_values' predecessor; 20,000 x 1,000 fp32,
// 2-core EPYC), which are for the GPU.
template <typename T>
inline SoftmaxState row_state_portable(const T* row, int64_t C) {
  SoftmaxState s = empty_state();
  for (int64_t c = 0; c < C; ++c) push(s, static_cast<float>(row[c]), c);
  return s;
}

}  // namespace unseen_fast
