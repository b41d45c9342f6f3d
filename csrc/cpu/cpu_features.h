// Which CPU score path runs: the AVX-512 two-sweep kernel when the CPU has it,
// else the portable online-merge loop. Tests switch it to cover both.
#pragma once

namespace unseen_fast {

bool cpu_has_avx512();
// Returns whether the AVX-512 path is in use after the call (false when the
// CPU lacks it, whatever was asked).
bool set_cpu_simd(bool enabled);
bool cpu_simd_enabled();

}  // namespace unseen_fast
