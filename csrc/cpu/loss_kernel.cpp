// CPU kernel of cross_entropy_with_stats: per row, the score kernel's row
// state (AVX-512 or AVX2 two sweeps, or the portable online merge), then one sweep
// that writes the gradient of the loss by the logits and sums z - max for
// label smoothing; the loss and the statistics come from the shared
// formulas of score_math.h. Backward is then only a scale (fused_loss.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../score_math.h"
#include "avx2_math.h"
#include "avx512_math.h"
#include "cpu_features.h"

namespace unseen_fast {
namespace {

#ifdef UF_HAVE_AVX512_PATH
using namespace avx512;

UF_AVX512 inline void store16(float* out, __m512 g, __mmask16 m) { _mm512_mask_storeu_ps(out, m, g); }

// float -> bfloat16 rounded to nearest even, NaN as 0x7FC0: c10::BFloat16's rule.
UF_AVX512 inline void store16(c10::BFloat16* out, __m512 g, __mmask16 m) {
  const __m512i bits = _mm512_castps_si512(g);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(g, g, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_mask_storeu_epi16(out, m, _mm512_cvtepi32_epi16(rounded));
}

// The gradient sweep of a defined row; returns sum(z - max) over the row.
template <typename T, typename G>
UF_AVX512 float gradient_sweep_avx512(const T* row, int64_t C, const LossRow& r, int64_t label, G* out) {
  const __m512 vmax = _mm512_set1_ps(r.max), inv_total = _mm512_set1_ps(r.inv_total);
  const __m512 smooth = _mm512_set1_ps(r.smooth), hit = _mm512_set1_ps(r.hit);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 sum_d = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 valid = tail_mask(C - c);
    const __m512 d = _mm512_sub_ps(load16(row + c, valid), vmax);
    __m512 g = _mm512_fmsub_ps(exp_or_zero(d), inv_total, smooth);
    const __mmask16 is_label = _mm512_cmpeq_epi32_mask(lane, _mm512_set1_epi32(static_cast<int>(label - c)));
    g = _mm512_mask_sub_ps(g, is_label, g, hit);
    sum_d = _mm512_mask_add_ps(sum_d, valid, sum_d, d);
    store16(out + c, g, valid);
  }
  return _mm512_reduce_add_ps(sum_d);
}
#endif  // UF_HAVE_AVX512_PATH

template <typename T, typename G>
float gradient_sweep_portable(const T* row, int64_t C, const LossRow& r, int64_t label, G* out) {
  float sum_d = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float z = static_cast<float>(row[c]);
    sum_d += z - r.max;
    out[c] = static_cast<G>(loss_gradient(r, z, c == label));
  }
  return sum_d;
}

template <typename T, typename G>
void loss_rows(const at::Tensor& logits, const int64_t* labels, const LossTarget& target, CpuPath path,
               float* loss, float* stats, G* grad) {
  const int64_t N = logits.size(0), C = logits.size(1);
  const int64_t row_stride = logits.stride(0), col_stride = logits.stride(1);
  const T* base = logits.const_data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 1024 / C);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
#ifdef UF_HAVE_AVX512_PATH
    // Flush-to-zero as in score: a probability below 2^-126 is written as 0.
    const FlushDenormals ftz;
#endif
    std::vector<T> gathered(col_stride == 1 ? 0 : C);
    for (int64_t i = begin; i < end; ++i) {
      const T* row = base + i * row_stride;  // 64-bit offsets throughout
      if (col_stride != 1) {  // strided rows are gathered once, in their dtype
        for (int64_t c = 0; c < C; ++c) gathered[c] = row[c * col_stride];
        row = gathered.data();
      }
      SoftmaxState s = empty_state();
      const T* next = col_stride == 1 && i + 1 < end ? row + row_stride : nullptr;
#ifdef UF_HAVE_AVX512_PATH
      if (path == CpuPath::kAvx512) s = row_state_avx512(row, C, next);
      if (path == CpuPath::kAvx2) s = avx2::row_state_avx2(row, C, next);
#endif
      if (path == CpuPath::kPortable) s = row_state_portable(row, C);  // the score kernel's portable path
      // out-of-range labels (check_labels=False) give a NaN row, as in score
      const int64_t label = labels[i] >= 0 && labels[i] < C ? labels[i] : -1;
      const float label_logit = label >= 0 ? static_cast<float>(row[label]) : 0.f;
      const LossRow r = loss_row(s, label, target);
      G* g = grad + i * C;
      float sum_d = 0.f;
      if (!r.defined) {
        for (int64_t c = 0; c < C; ++c) g[c] = static_cast<G>(loss_gradient(r, 0.f, false));
      } else {
#ifdef UF_HAVE_AVX512_PATH
        if (path == CpuPath::kAvx512) sum_d = gradient_sweep_avx512(row, C, r, label, g);
#endif
        // AVX2 takes the scalar sweep: only its row state is vectorized so far
        if (path != CpuPath::kAvx512) sum_d = gradient_sweep_portable(row, C, r, label, g);
      }
      loss[i] = loss_and_stats(s, label, label_logit, target, sum_d / static_cast<float>(C),
                               stats + i * kNumLossStats);
    }
  });
}

template <typename T>
void loss_typed(const at::Tensor& logits, const int64_t* labels, const LossTarget& target, CpuPath path,
                float* loss, float* stats, at::Tensor& grad) {
  if (grad.scalar_type() == at::kBFloat16)
    loss_rows<T>(logits, labels, target, path, loss, stats, grad.data_ptr<c10::BFloat16>());
  else
    loss_rows<T>(logits, labels, target, path, loss, stats, grad.data_ptr<float>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_with_stats_cpu(
    const at::Tensor& logits, const at::Tensor& labels, double label_smoothing, bool check_labels) {
  check_loss_args(logits, labels, label_smoothing, check_labels);
  const int64_t N = logits.size(0), C = logits.size(1);
  at::Tensor loss = at::empty({N}, logits.options().dtype(at::kFloat));
  at::Tensor stats = at::empty({N, kNumLossStats}, logits.options().dtype(at::kFloat));
  at::Tensor grad = at::empty({N, C}, logits.options().dtype(loss_gradient_dtype(logits.scalar_type())));
  if (N == 0) return {loss, stats, grad};
  const at::Tensor y = labels.contiguous();
  const LossTarget target = loss_target(label_smoothing, C);
  const CpuPath path = cpu_path();
  switch (logits.scalar_type()) {  // the three dtypes check_score_args admits
    case at::kFloat:
      loss_typed<float>(logits, y.const_data_ptr<int64_t>(), target, path, loss.data_ptr<float>(),
                        stats.data_ptr<float>(), grad);
      break;
    case at::kBFloat16:
      loss_typed<c10::BFloat16>(logits, y.const_data_ptr<int64_t>(), target, path, loss.data_ptr<float>(),
                                stats.data_ptr<float>(), grad);
      break;
    default:
      loss_typed<c10::Half>(logits, y.const_data_ptr<int64_t>(), target, path, loss.data_ptr<float>(),
                            stats.data_ptr<float>(), grad);
  }
  return {loss, stats, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CPU, m) {
  m.impl("cross_entropy_with_stats", &cross_entropy_with_stats_cpu);
}

}  // namespace unseen_fast
