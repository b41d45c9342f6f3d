// AVX-512 building blocks shared by the CPU score and loss kernels: masked
// loads of the three logit dtypes, exp / log1p / expm1 on 16 lanes, and the
// two-sweep row state (the SoftmaxState the online merge of score_math.h
// builds, from a row sitting in L1). Compiled per function with target
// attributes, so the files build on any x86-64 and run the path only when
// cpu_has_avx512() says so.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#define UF_HAVE_AVX512_PATH 1
#endif

#ifdef UF_HAVE_AVX512_PATH

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../score_math.h"

namespace unseen_fast {

// 2^f on [-0.5, 0.5], highest power first (Cephes exp2f, ~2 ulp): the
// polynomial of both vector paths' exp (this file and avx2_math.h).
inline constexpr float kExp2Poly[] = {1.535336188319500e-4f, 1.339887440266574e-3f, 9.618437357674640e-3f,
                                      5.550332471162809e-2f, 2.402264791363012e-1f, 6.931472028550421e-1f, 1.f};

}  // namespace unseen_fast

namespace unseen_fast::avx512 {

#define UF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

UF_AVX512 inline __m512 load16(const float* p, __mmask16 m) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(neg_inf()), m, p);
}

UF_AVX512 inline __m512 load16(const c10::BFloat16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_mask_blend_ps(m, _mm512_set1_ps(neg_inf()), v);
}

UF_AVX512 inline __m512 load16(const c10::Half* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_mask_blend_ps(m, _mm512_set1_ps(neg_inf()), _mm512_cvtph_ps(h));
}

// e^x for x in [-120, 0] as 2^(x log2 e): round, the degree-6 polynomial
// kExp2Poly for 2^f and an exact scale by 2^n.
UF_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  return _mm512_scalef_ps(p, n);
}

// The three exp sums of SoftmaxState, per lane.
struct ExpSums {
  __m512 e;   // exp(d)
  __m512 e2;  // exp(2 d)
  __m512 ed;  // exp(d) * d
};

UF_AVX512 inline ExpSums zero_exp_sums() {
  return {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
}

// Adds the lanes in `rest` of d = z - max (<= 0) to the sums. -inf is
// clamped to -120 first, so e = 0 and e * d = 0 (not NaN); NaN is kept.
UF_AVX512 inline void add_exp_terms(ExpSums& sums, __m512 d, __mmask16 rest) {
  d = _mm512_max_ps(_mm512_set1_ps(-120.f), d);
  const __m512 e = exp_nonpositive(d);
  sums.e = _mm512_mask_add_ps(sums.e, rest, sums.e, e);
  sums.e2 = _mm512_mask3_fmadd_ps(e, e, sums.e2, rest);
  sums.ed = _mm512_mask3_fmadd_ps(e, d, sums.ed, rest);
}

// e^x for any x <= 0, -inf included (gives 0).
UF_AVX512 inline __m512 exp_or_zero(__m512 x) {
  return exp_nonpositive(_mm512_max_ps(_mm512_set1_ps(-120.f), x));
}

// log1p(x) for x >= 0: log(u) * x / (u - 1) with u = 1 + x keeps tiny x exact;
// log(u) = e ln 2 + log(m), m in [sqrt(1/2), sqrt 2), by the atanh series.
UF_AVX512 inline __m512 log1p_nonnegative(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 u = _mm512_add_ps(one, x);
  __m512 m = _mm512_getmant_ps(u, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
  __m512 e = _mm512_getexp_ps(u);
  const __mmask16 high = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, high, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, high, e, one);
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(m, one), _mm512_add_ps(m, one));
  const __m512 t2 = _mm512_mul_ps(t, t);
  __m512 p = _mm512_set1_ps(1.f / 11);
  p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.f / 9));
  p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.f / 7));
  p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.f / 5));
  p = _mm512_fmadd_ps(p, t2, _mm512_set1_ps(1.f / 3));
  p = _mm512_fmadd_ps(p, t2, one);
  const __m512 log_u = _mm512_fmadd_ps(e, _mm512_set1_ps(0.693147180559945f),
                                       _mm512_mul_ps(_mm512_add_ps(t, t), p));
  const __m512 u_minus_1 = _mm512_sub_ps(u, one);
  const __mmask16 exact = _mm512_cmp_ps_mask(u_minus_1, _mm512_setzero_ps(), _CMP_EQ_OQ);
  const __m512 scaled = _mm512_mul_ps(log_u, _mm512_div_ps(x, u_minus_1));
  return _mm512_mask_blend_ps(exact, scaled, x);  // u == 1: log1p(x) = x
}

// expm1(x) for x <= 0 (-inf gives -1): Taylor series on (-0.5, 0], where
// exp(x) - 1 would cancel, exp(x) - 1 below.
UF_AVX512 inline __m512 expm1_nonpositive(__m512 x) {
  __m512 p = _mm512_set1_ps(1.f / 40320);
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 5040));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.f));
  const __m512 series = _mm512_mul_ps(p, x);
  const __m512 direct = _mm512_sub_ps(exp_or_zero(x), _mm512_set1_ps(1.f));
  const __mmask16 small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-0.5f), _CMP_GT_OQ);
  return _mm512_mask_blend_ps(small, direct, series);
}

UF_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
}

// Flush-to-zero while a chunk of rows is scored: exp() of very negative
// differences underflows, and without FTZ every underflow is a ~150-cycle
// microcode assist. Lost values are below 1e-38 next to the max's 1.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
};

// `next` (may be null) is the next row: sweep 2 prefetches it line by line so
// its memory latency hides behind this row's exp work.
template <typename T>
UF_AVX512 SoftmaxState row_state_avx512(const T* row, int64_t C, const T* next) {
  // Sweep 1: the row maximum (four independent chains to hide max latency).
  // NaN may be dropped here; sweep 2 catches it.
  __m512 top[4];
  for (auto& t : top) t = _mm512_set1_ps(neg_inf());
  int64_t c = 0;
  for (; c + 64 <= C; c += 64)
    for (int u = 0; u < 4; ++u)
      top[u] = _mm512_max_ps(top[u], load16(row + c + 16 * u, __mmask16(0xFFFF)));
  for (; c < C; c += 16) top[0] = _mm512_max_ps(top[0], load16(row + c, tail_mask(C - c)));
  const float mx = _mm512_reduce_max_ps(
      _mm512_max_ps(_mm512_max_ps(top[0], top[1]), _mm512_max_ps(top[2], top[3])));
  SoftmaxState s = empty_state();
  s.max = mx;
  if (!(mx > neg_inf() && mx < -neg_inf())) {  // +inf, all -inf, or NaN: finalize gives NaN
    s.nan = mx != mx;
    return s;
  }
  // Sweep 2: differences d = z - max. Elements with d == 0 (argmax and its
  // duplicates) count exactly 1 each, added after the loop; the rest feed the
  // exp sums and the second-largest difference.
  const __m512 vmax = _mm512_set1_ps(mx);
  ExpSums sums = zero_exp_sums();
  __m512 second = _mm512_set1_ps(neg_inf());
  int64_t n_top = 0, first_top = -1;
  for (c = 0; c < C; c += 16) {
    const __mmask16 valid = tail_mask(C - c);
    if (next) _mm_prefetch(reinterpret_cast<const char*>(next + c), _MM_HINT_T0);
    const __m512 z = load16(row + c, valid);
    __m512 d = _mm512_sub_ps(z, vmax);
    const __mmask16 is_top = _mm512_mask_cmp_ps_mask(valid, d, _mm512_setzero_ps(), _CMP_EQ_OQ);
    const __mmask16 rest = valid & ~is_top;
    if (is_top) {
      if (first_top < 0) first_top = c + __builtin_ctz(is_top);
      n_top += __builtin_popcount(is_top);
    }
    second = _mm512_mask_max_ps(second, rest, second, z);
    add_exp_terms(sums, d, rest);
  }
  s.rest_sum = _mm512_reduce_add_ps(sums.e) + static_cast<float>(n_top - 1);
  s.nan = s.rest_sum != s.rest_sum;
  s.argmax = first_top;
  s.second = n_top > 1 ? mx : _mm512_reduce_max_ps(second);
  s.rest_sq = _mm512_reduce_add_ps(sums.e2) + static_cast<float>(n_top - 1);
  s.ent_term = _mm512_reduce_add_ps(sums.ed);
  return s;
}

}  // namespace unseen_fast::avx512

#endif  // UF_HAVE_AVX512_PATH
