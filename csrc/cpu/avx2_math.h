// AVX2 + FMA row state for CPUs without AVX-512 (AMD Zen 1-3, most Intel
// client parts): the two sweeps of row_state_avx512 on 8 lanes. AVX2 has no
// mask registers, so a row's tail is copied into a buffer padded with -inf
// (which adds exactly 0 to every sum), and 2^n is built in the exponent bits.
// Compiled per function with target attributes, like avx512_math.h; run only
// where cpu_has_avx2() says so.
#pragma once

#include "avx512_math.h"  // UF_HAVE_AVX512_PATH: an x86-64 build, immintrin.h

#ifdef UF_HAVE_AVX512_PATH
#define UF_HAVE_AVX2_PATH 1

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../score_math.h"

namespace unseen_fast::avx2 {

#define UF_AVX2 __attribute__((target("avx2,fma,f16c")))

UF_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

UF_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

UF_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The `left` (< 8) last elements of a row, the other lanes -inf.
template <typename T>
UF_AVX2 inline __m256 load_tail(const T* p, int64_t left) {
  alignas(32) float v[8];
  for (int i = 0; i < 8; ++i) v[i] = i < left ? static_cast<float>(p[i]) : neg_inf();
  return _mm256_load_ps(v);
}

UF_AVX2 inline float reduce_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

UF_AVX2 inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for x in [-120, 0], as avx512::exp_nonpositive (the same kExp2Poly);
// 2^n from the exponent bits, 0 for n <= -127 (results below 2^-126 are
// flushed to 0 anyway, as on the AVX-512 path).
UF_AVX2 inline __m256 exp_nonpositive(__m256 x) {
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  __m256 p = _mm256_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
  // 2^n for n >= -126; n <= -127 gives exponent bits 0, i.e. 0 (NaN keeps p NaN: 0 * NaN)
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-127.f))),
                                          _mm256_set1_epi32(127));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
}

// `next` (may be null) is the next row, prefetched line by line in sweep 2.
// The same SoftmaxState as the other paths; sums in another order (8 lanes).
template <typename T>
UF_AVX2 SoftmaxState row_state_avx2(const T* row, int64_t C, const T* next) {
  const int64_t full = C & ~int64_t(7);  // elements in whole chunks of 8
  // Sweep 1: the row maximum, four chains. NaN may be dropped here
  // (max returns its second operand); sweep 2 catches it.
  __m256 top[4];
  for (auto& t : top) t = _mm256_set1_ps(neg_inf());
  int64_t c = 0;
  for (; c + 32 <= full; c += 32)
    for (int u = 0; u < 4; ++u) top[u] = _mm256_max_ps(top[u], load8(row + c + 8 * u));
  for (; c < full; c += 8) top[0] = _mm256_max_ps(top[0], load8(row + c));
  if (full < C) top[1] = _mm256_max_ps(top[1], load_tail(row + full, C - full));
  const float mx = reduce_max(_mm256_max_ps(_mm256_max_ps(top[0], top[1]), _mm256_max_ps(top[2], top[3])));
  SoftmaxState s = empty_state();
  s.max = mx;
  if (!(mx > neg_inf() && mx < -neg_inf())) {  // +inf, all -inf, or NaN: finalize gives NaN
    s.nan = mx != mx;
    return s;
  }
  // Sweep 2: d = z - max. Elements with d == 0 count exactly 1 each (added
  // after the loop); the rest feed the exp sums and the second largest.
  const __m256 vmax = _mm256_set1_ps(mx), zero = _mm256_setzero_ps(), floor = _mm256_set1_ps(-120.f);
  __m256 e_sum = zero, e2_sum = zero, ed_sum = zero, second = _mm256_set1_ps(neg_inf());
  int64_t n_top = 0, first_top = -1;
  for (c = 0; c < C; c += 8) {
    if (next != nullptr && (c & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(next + c), _MM_HINT_T0);
    const __m256 z = c < full ? load8(row + c) : load_tail(row + c, C - c);  // padding: -inf, adds 0
    const __m256 d_raw = _mm256_sub_ps(z, vmax);
    const __m256 is_top = _mm256_cmp_ps(d_raw, zero, _CMP_EQ_OQ);
    if (const int bits = _mm256_movemask_ps(is_top)) {
      if (first_top < 0) first_top = c + __builtin_ctz(bits);
      n_top += __builtin_popcount(bits);
    }
    second = _mm256_max_ps(second, _mm256_blendv_ps(z, _mm256_set1_ps(neg_inf()), is_top));
    const __m256 d = _mm256_max_ps(floor, d_raw);  // -inf -> -120 (e = 0, e d = 0); NaN stays
    const __m256 e = _mm256_andnot_ps(is_top, exp_nonpositive(d));  // the top elements add 0
    e_sum = _mm256_add_ps(e_sum, e);
    e2_sum = _mm256_fmadd_ps(e, e, e2_sum);
    ed_sum = _mm256_fmadd_ps(e, d, ed_sum);
  }
  s.rest_sum = reduce_add(e_sum) + static_cast<float>(n_top - 1);
  s.nan = s.rest_sum != s.rest_sum;
  s.argmax = first_top;
  s.second = n_top > 1 ? mx : reduce_max(second);
  s.rest_sq = reduce_add(e2_sum) + static_cast<float>(n_top - 1);
  s.ent_term = reduce_add(ed_sum);
  return s;
}

}  // namespace unseen_fast::avx2

#endif  // UF_HAVE_AVX512_PATH
