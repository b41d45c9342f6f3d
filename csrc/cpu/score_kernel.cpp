// CPU kernels of score and _score_tree.
//
// Fast path (AVX-512, avx512_math.h): two sweeps over a row while it sits in
// L1, or 16 rows as lanes for small C. AVX2 path (avx2_math.h): the same two
// sweeps on 8 lanes, per row at every C. Each gives the same SoftmaxState the
// online merge builds, finished by the shared finalize(). Portable path: the
// online merge of score_math.h, one element at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../checks.h"
#include "../score_math.h"
#include "avx2_math.h"
#include "avx512_math.h"
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

bool cpu_has_avx2() {
#ifndef UF_HAVE_AVX2_PATH
  return false;
#else
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c");
  return has;
#endif
}

CpuPath best_cpu_path() {
  return cpu_has_avx512() ? CpuPath::kAvx512 : cpu_has_avx2() ? CpuPath::kAvx2 : CpuPath::kPortable;
}

static std::atomic<int> g_requested_path{static_cast<int>(CpuPath::kAvx512)};

CpuPath cpu_path() {
  return static_cast<CpuPath>(std::min(g_requested_path.load(), static_cast<int>(best_cpu_path())));
}

CpuPath set_cpu_path(CpuPath path) {
  g_requested_path = static_cast<int>(path);
  return cpu_path();
}

const char* cpu_path_name(CpuPath path) {
  switch (path) {
    case CpuPath::kAvx512: return "avx512";
    case CpuPath::kAvx2: return "avx2";
    default: return "portable";
  }
}

CpuPath cpu_path_from_name(const char* name) {
  for (const CpuPath path : {CpuPath::kAvx512, CpuPath::kAvx2, CpuPath::kPortable})
    if (std::strcmp(name, cpu_path_name(path)) == 0) return path;
  throw std::invalid_argument(std::string("unknown CPU path '") + name + "'; choose avx512, avx2 or portable");
}

bool set_cpu_simd(bool enabled) {
  set_cpu_path(enabled ? CpuPath::kAvx512 : CpuPath::kPortable);
  return cpu_simd_enabled();
}

bool cpu_simd_enabled() { return cpu_path() != CpuPath::kPortable; }

namespace {

#ifdef UF_HAVE_AVX512_PATH
using namespace avx512;

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

// Leaves of the split tree may be chunks of 8 folded by fold_values, as the
// CUDA kernels fold what their loads bring: the tree test checks it on the CPU.
constexpr int kTreeChunk = 8;

// Random split tree over [lo, hi): both halves may be empty, and the merge
// arguments are swapped at random, to check associativity and commutativity.
template <typename T>
SoftmaxState row_state_tree(const T* row, int64_t lo, int64_t hi, std::mt19937_64& rng) {
  if (hi - lo <= 1) {
    SoftmaxState s = empty_state();
    if (hi - lo == 1) push(s, static_cast<float>(row[lo]), lo);
    return s;
  }
  if (hi - lo <= kTreeChunk && (rng() & 1)) {  // a leaf chunk, folded as the CUDA kernels do
    float v[kTreeChunk];
    for (int64_t i = 0; i < kTreeChunk; ++i) v[i] = lo + i < hi ? static_cast<float>(row[lo + i]) : neg_inf();
    return fold_values<kTreeChunk, kTreeChunk / 2>(v, lo, kTreeChunk / 2);  // two groups of 4, adjacent
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

enum class RowPath { kAvx512, kAvx2, kPortable, kTree };

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
      [[maybe_unused]] const T* next = col_stride == 1 && r + 1 < end ? row + row_stride : nullptr;
      if (path == RowPath::kAvx512) {
#ifdef UF_HAVE_AVX512_PATH
        s = row_state_avx512(row, C, next);
#endif
      } else if (path == RowPath::kAvx2) {
#ifdef UF_HAVE_AVX2_PATH
        s = avx2::row_state_avx2(row, C, next);
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
  const CpuPath cpu = cpu_path();
  const RowPath path = cpu == CpuPath::kAvx512 ? RowPath::kAvx512
                       : cpu == CpuPath::kAvx2 ? RowPath::kAvx2 : RowPath::kPortable;
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
