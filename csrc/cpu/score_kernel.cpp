// CPU kernels of score and _score_tree.
//
// Fast path (AVX-512): two sweeps over a row while it sits in L1. Sweep 1
// finds max, argmax and the second-largest logit; sweep 2 accumulates the
// exp sums relative to that max. The result is the same SoftmaxState the
// online merge builds, finished by the shared finalize(). Portable path: the
// online merge of score_math.h, one element at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define UF_HAVE_AVX512_PATH 1
#endif

#include <atomic>
#include <random>
#include <vector>

#include "../checks.h"
#include "../score_math.h"
#include "cpu_features.h"

namespace unseen_fast {

bool cpu_has_avx512() {
#ifndef UF_HAVE_AVX512_PATH
  return false;
#else
  static const bool has = __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq");
  return has;
#endif
}

static std::atomic<bool> g_simd_enabled{true};

bool set_cpu_simd(bool enabled) {
  g_simd_enabled = enabled;
  return cpu_simd_enabled();
}

bool cpu_simd_enabled() { return g_simd_enabled && cpu_has_avx512(); }

namespace {

#ifdef UF_HAVE_AVX512_PATH
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

// e^x for x in [-120, 0] as 2^(x log2 e): round, a degree-6 polynomial for
// 2^f on [-0.5, 0.5] (Cephes exp2f, ~2 ulp) and an exact scale by 2^n.
UF_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
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

// Rows as lanes for small C, where one row fills less than a vector: 16 rows
// at once, one vector per column, the same two sweeps with no lane reductions.
constexpr int64_t kSmallC = 16;

// Scores 16 rows [r, r + 16): `labels` and `out` point at row r's entries.
template <typename T>
UF_AVX512 void score_block_avx512(const T* base, int64_t row_stride, int64_t col_stride,
                                  int64_t C, const int64_t* labels, at::IntArrayRef methods,
                                  float* out) {
  const int64_t M = static_cast<int64_t>(methods.size());
  alignas(64) float cols[kSmallC * 16];
  for (int i = 0; i < 16; ++i)
    for (int64_t j = 0; j < C; ++j)
      cols[j * 16 + i] = static_cast<float>(base[i * row_stride + j * col_stride]);
  __m512 top = _mm512_set1_ps(neg_inf()), second = top;
  __m512i arg = _mm512_setzero_si512();
  __mmask16 nan_seen = 0;
  for (int64_t j = 0; j < C; ++j) {
    const __m512 z = _mm512_load_ps(cols + j * 16);
    nan_seen |= _mm512_cmp_ps_mask(z, z, _CMP_UNORD_Q);
    const __mmask16 gt = _mm512_cmp_ps_mask(z, top, _CMP_GT_OQ);
    second = _mm512_max_ps(second, _mm512_min_ps(top, z));  // a duplicate max counts
    top = _mm512_mask_blend_ps(gt, top, z);
    arg = _mm512_mask_mov_epi32(arg, gt, _mm512_set1_epi32(static_cast<int>(j)));
  }
  ExpSums sums = zero_exp_sums();
  __m512i n_top = _mm512_setzero_si512();
  for (int64_t j = 0; j < C; ++j) {
    const __m512 d = _mm512_sub_ps(_mm512_load_ps(cols + j * 16), top);
    const __mmask16 is_top = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ);
    n_top = _mm512_mask_add_epi32(n_top, is_top, n_top, _mm512_set1_epi32(1));
    add_exp_terms(sums, d, static_cast<__mmask16>(~is_top));
  }
  const __m512 sum_e = sums.e, sum_e2 = sums.e2, sum_ed = sums.ed;
  // The score formulas of finalize() (score_math.h), 16 rows at a time.
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 rest = _mm512_add_ps(sum_e, _mm512_cvtepi32_ps(_mm512_sub_epi32(n_top, _mm512_set1_epi32(1))));
  const __m512 rest_sq = _mm512_add_ps(sum_e2, _mm512_cvtepi32_ps(_mm512_sub_epi32(n_top, _mm512_set1_epi32(1))));
  const __m512 inv_total = _mm512_div_ps(one, _mm512_add_ps(one, rest));
  // NaN seen, or a max that is +inf / -inf (row of only -inf): NaN scores.
  const __mmask16 undefined = nan_seen | _mm512_fpclass_ps_mask(top, 0x01 | 0x08 | 0x10 | 0x80);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __mmask16 has_label = 0;
  __m512i label = _mm512_set1_epi32(-1);
  if (labels != nullptr) {
    alignas(64) int32_t y[16];
    for (int i = 0; i < 16; ++i) y[i] = (labels[i] >= 0 && labels[i] < C) ? int32_t(labels[i]) : -1;
    label = _mm512_load_si512(y);
    has_label = _mm512_cmpge_epi32_mask(label, _mm512_setzero_si512());
  }
  const __m512 z_label = _mm512_mask_i32gather_ps(
      _mm512_setzero_ps(), has_label,
      _mm512_add_epi32(_mm512_mullo_epi32(label, _mm512_set1_epi32(16)), lane), cols, 4);
  const __mmask16 label_is_top = has_label & _mm512_cmpeq_epi32_mask(label, arg);
  const __m512 label_gap = _mm512_sub_ps(z_label, top);  // <= 0
  const __m512 second_gap = _mm512_sub_ps(second, top);  // <= 0
  const __m512 nan = _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN());
  const __m512i out_index = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(M)));
  bool needs_log = false;  // log S is shared by entropy and loss: compute it once
  for (const int64_t m : methods) needs_log = needs_log || m == kEntropy || m == kLoss;
  const __m512 log_total = needs_log ? log1p_nonnegative(rest) : _mm512_setzero_ps();
  for (int64_t j = 0; j < M; ++j) {
    __m512 v;
    switch (methods[j]) {
      case kEntropy:
        v = _mm512_sub_ps(log_total, _mm512_mul_ps(sum_ed, inv_total));
        break;
      case kLoss:
        v = _mm512_sub_ps(log_total, label_gap);
        break;
      case kLeastConfidence:
        v = _mm512_mul_ps(rest, inv_total);
        break;
      case kMargin:
        v = _mm512_mul_ps(_mm512_add_ps(rest, exp_or_zero(second_gap)), inv_total);
        break;
      case kEl2n: {
        const __m512 top_case = _mm512_sqrt_ps(_mm512_fmadd_ps(rest, rest, rest_sq));
        const __m512 e_y = exp_or_zero(label_gap);
        const __m512 miss = _mm512_sub_ps(_mm512_add_ps(one, rest), e_y);
        const __m512 others = _mm512_fnmadd_ps(e_y, e_y, _mm512_add_ps(one, rest_sq));
        const __m512 other_case = _mm512_sqrt_ps(_mm512_max_ps(_mm512_fmadd_ps(miss, miss, others), _mm512_setzero_ps()));
        v = _mm512_mul_ps(_mm512_mask_blend_ps(label_is_top, other_case, top_case), inv_total);
        break;
      }
      case kTrueMargin: {
        const __m512 top_case = expm1_nonpositive(second_gap);
        const __m512 other_case = _mm512_sub_ps(_mm512_setzero_ps(), expm1_nonpositive(label_gap));
        v = _mm512_mul_ps(_mm512_mask_blend_ps(label_is_top, other_case, top_case), inv_total);
        break;
      }
      case kLogitGap:  // the largest other logit minus the label's: one rounding, as finalize()
        v = _mm512_sub_ps(_mm512_mask_blend_ps(label_is_top, top, second), z_label);
        break;
      default:  // kCorrect
        v = _mm512_mask_blend_ps(label_is_top, _mm512_setzero_ps(), one);
    }
    __mmask16 invalid = undefined;
    if (method_needs_label(methods[j])) invalid |= static_cast<__mmask16>(~has_label);
    v = _mm512_mask_blend_ps(invalid, v, nan);
    _mm512_i32scatter_ps(out + j, out_index, v, 4);
  }
}

#endif  // UF_HAVE_AVX512_PATH

template <typename T>
SoftmaxState row_state_portable(const T* row, int64_t C) {
  SoftmaxState s = empty_state();
  for (int64_t c = 0; c < C; ++c) push(s, static_cast<float>(row[c]), c);
  return s;
}

// Random split tree over [lo, hi): both halves may be empty, and the merge
// arguments are swapped at random, to check associativity and commutativity.
template <typename T>
SoftmaxState row_state_tree(const T* row, int64_t lo, int64_t hi, std::mt19937_64& rng) {
  if (hi - lo <= 1) {
    SoftmaxState s = empty_state();
    if (hi - lo == 1) push(s, static_cast<float>(row[lo]), lo);
    return s;
  }
  const int64_t mid = std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  if (mid == lo || mid == hi) {  // an empty side, then a real split
    const SoftmaxState empty = empty_state();
    const int64_t cut = lo + 1 + static_cast<int64_t>(rng() % (hi - lo - 1));
    const SoftmaxState whole = merge(row_state_tree(row, lo, cut, rng),
                                     row_state_tree(row, cut, hi, rng));
    return (rng() & 1) ? merge(empty, whole) : merge(whole, empty);
  }
  const SoftmaxState left = row_state_tree(row, lo, mid, rng);
  const SoftmaxState right = row_state_tree(row, mid, hi, rng);
  return (rng() & 1) ? merge(left, right) : merge(right, left);
}

enum class RowPath { kAvx512, kPortable, kTree };

template <typename T>
void score_rows(const at::Tensor& logits, const int64_t* labels,
                at::IntArrayRef methods, RowPath path, int64_t seed, float* out) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const int64_t row_stride = logits.stride(0), col_stride = logits.stride(1);
  const T* base = logits.const_data_ptr<T>();
  const int64_t M = static_cast<int64_t>(methods.size());
  // Work is split in blocks of 16 rows, so which path scores a row (rows-as-
  // lanes or per row) depends on N alone, never on the thread count.
  const int64_t grain = std::max<int64_t>(1, 1024 / std::max<int64_t>(C, 1));
  at::parallel_for(0, (N + 15) / 16, grain, [&](int64_t block_begin, int64_t block_end) {
    const int64_t begin = block_begin * 16, end = std::min(N, block_end * 16);
#ifdef UF_HAVE_AVX512_PATH
    const FlushDenormals ftz;
#endif
    // Label lookup and the scores of one finished row (`row` is contiguous).
    auto finish = [&](int64_t r, const SoftmaxState& s, const T* row) {
      int64_t label = -1;
      float label_logit = 0.f;
      if (labels != nullptr && labels[r] >= 0 && labels[r] < C) {
        label = labels[r];
        label_logit = static_cast<float>(row[label]);
      }
      for (int64_t j = 0; j < M; ++j) out[r * M + j] = finalize(s, methods[j], label, label_logit);
    };
    int64_t r = begin;
#ifdef UF_HAVE_AVX512_PATH
    if (path == RowPath::kAvx512 && C <= kSmallC) {
      for (; r + 16 <= end; r += 16)
        score_block_avx512(base + r * row_stride, row_stride, col_stride, C,
                           labels ? labels + r : nullptr, methods, out + r * M);
    }
#endif
    std::vector<T> gathered(col_stride == 1 ? 0 : C);
    for (; r < end; ++r) {
      const T* row = base + r * row_stride;  // 64-bit offsets throughout
      if (col_stride != 1) {  // strided rows are gathered once, in their dtype
        for (int64_t c = 0; c < C; ++c) gathered[c] = row[c * col_stride];
        row = gathered.data();
      }
      SoftmaxState s;
      if (path == RowPath::kAvx512) {
#ifdef UF_HAVE_AVX512_PATH
        const bool has_next = col_stride == 1 && r + 1 < end;
        s = row_state_avx512(row, C, has_next ? row + row_stride : nullptr);
#endif
      } else if (path == RowPath::kPortable) {
        s = row_state_portable(row, C);
      } else {
        std::mt19937_64 rng(static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ull + r);
        s = row_state_tree(row, 0, C, rng);
      }
      finish(r, s, row);
    }
  });
}

at::Tensor score_impl(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                      at::IntArrayRef methods, bool check_labels, RowPath path,
                      int64_t seed) {
  check_score_args(logits, labels, methods, check_labels);
  const int64_t N = logits.size(0);
  at::Tensor out = at::empty({N, static_cast<int64_t>(methods.size())},
                             logits.options().dtype(at::kFloat));
  if (N == 0 || methods.empty()) return out;
  at::Tensor y;
  if (labels.has_value()) y = labels->contiguous();
  const int64_t* y_ptr = labels.has_value() ? y.const_data_ptr<int64_t>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  switch (logits.scalar_type()) {  // the three dtypes check_score_args admits
    case at::kFloat:
      score_rows<float>(logits, y_ptr, methods, path, seed, out_ptr);
      break;
    case at::kBFloat16:
      score_rows<c10::BFloat16>(logits, y_ptr, methods, path, seed, out_ptr);
      break;
    default:
      score_rows<c10::Half>(logits, y_ptr, methods, path, seed, out_ptr);
  }
  return out;
}

at::Tensor score_cpu(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                     at::IntArrayRef methods, bool check_labels) {
  const RowPath path = cpu_simd_enabled() ? RowPath::kAvx512 : RowPath::kPortable;
  return score_impl(logits, labels, methods, check_labels, path, 0);
}

at::Tensor score_tree_cpu(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                          at::IntArrayRef methods, int64_t seed) {
  return score_impl(logits, labels, methods, true, RowPath::kTree, seed);
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CPU, m) {
  m.impl("score", &score_cpu);
  m.impl("_score_tree", &score_tree_cpu);
}

}  // namespace unseen_fast
