// Online softmax state, its merge and the score formulas: one header shared by
// the CPU kernel, the CUDA kernel and the split-tree test op, so the row math
// has exactly one implementation.
//
// The state keeps every sum relative to the running maximum and leaves the
// argmax element out of `rest_sum` / `rest_sq`. The total is then
// S = 1 + rest_sum, and the scores of confident rows (p1 -> 1) come out
// without cancellation: 1 - p1 = rest_sum / S, log S = log1p(rest_sum).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace unseen_fast {

// THE list of score methods: (enum name, Python name, needs a label), in the
// order of their integer codes. unseen_fast/ops.py reads it from the
// extension (_C.score_methods()); nothing else repeats it. Every score is an
// "importance": higher = harder = kept first (correct is 1.0 / 0.0).
#define UNSEEN_FAST_SCORE_METHODS(X)     \
  X(kEntropy, "entropy", false)          \
  X(kLoss, "loss", true)                 \
  X(kLeastConfidence, "least_confidence", false) \
  X(kMargin, "margin", false)            \
  X(kEl2n, "el2n", true)                 \
  X(kTrueMargin, "true_margin", true)    \
  X(kCorrect, "correct", true)           \
  X(kLogitGap, "logit_gap", true)

enum ScoreMethod : int64_t {
#define UNSEEN_FAST_ENUM(id, name, label) id,
  UNSEEN_FAST_SCORE_METHODS(UNSEEN_FAST_ENUM)
#undef UNSEEN_FAST_ENUM
  kNumMethods,
};

C10_HOST_DEVICE inline bool method_needs_label(int64_t method) {
  switch (method) {
#define UNSEEN_FAST_LABEL(id, name, label) \
  case id:                                 \
    return label;
    UNSEEN_FAST_SCORE_METHODS(UNSEEN_FAST_LABEL)
#undef UNSEEN_FAST_LABEL
    default:
      return false;
  }
}

inline const char* method_name(int64_t method) {
  switch (method) {
#define UNSEEN_FAST_NAME(id, name, label) \
  case id:                                \
    return name;
    UNSEEN_FAST_SCORE_METHODS(UNSEEN_FAST_NAME)
#undef UNSEEN_FAST_NAME
    default:
      return "?";
  }
}

struct SoftmaxState {
  float max;        // largest logit seen, -inf when none
  int64_t argmax;   // lowest index holding `max`
  float second;     // second-largest logit (a duplicate of max counts)
  float rest_sum;   // sum of exp(z - max) over all elements but the argmax
  float rest_sq;    // sum of exp(2 (z - max)) over all elements but the argmax
  float ent_term;   // sum of exp(z - max) * (z - max) over all elements
  bool nan;         // a NaN was seen: every score of the row is NaN
};

C10_HOST_DEVICE inline float neg_inf() {
  return -std::numeric_limits<float>::infinity();
}

C10_HOST_DEVICE inline SoftmaxState empty_state() {
  return SoftmaxState{neg_inf(), INT64_MAX, neg_inf(), 0.f, 0.f, 0.f, false};
}

// exp(d) for d <= 0 (or NaN) in the row math's hot loops. On the GPU
// 2^(d log2 e) by one MUFU.EX2 that flushes subnormal results to 0, as
// quack's kernels do (expf is a 10-instruction range reduction around the
// same MUFU.EX2; exp2f adds a range test and two scalings); its error is
// about 2 ulp, and the results it flushes (< 1.2e-38) go into sums that
// hold the argmax's 1 or are read relative to it. Elsewhere (CPU kernels,
// the CUDA emulation) expf, as before.
C10_HOST_DEVICE inline float exp_of_nonpositive(float d) {
#if defined(__CUDA_ARCH__)
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(d * 1.44269504088896341f));
  return e;
#else
  return expf(d);
#endif
}

// Merge of two partial states of disjoint parts of one row. Commutative (the
// winner is chosen by (max, -argmax), not by argument order), so any
// reduction tree, a warp shuffle included, gives the same argmax and, up to
// float rounding, the same sums.
C10_HOST_DEVICE inline SoftmaxState merge(const SoftmaxState& a,
                                          const SoftmaxState& b) {
  const bool a_wins = a.max > b.max || (a.max == b.max && a.argmax < b.argmax);
  // by value: references to one of two states would put both in (GPU)
  // local memory; copies stay in registers
  const SoftmaxState win = a_wins ? a : b;
  const SoftmaxState lose = a_wins ? b : a;
  SoftmaxState out = win;
  out.nan = a.nan || b.nan;
  out.second = fmaxf(win.second, lose.max);
  const float shift = lose.max - win.max;  // <= 0, or NaN when both are +inf
  const float scale = exp_of_nonpositive(shift);
  // A loser holding only -inf (or nothing), or one that underflows entirely,
  // adds nothing; skipping it also avoids 0 * inf = NaN.
  if (!(scale > 0.f)) return out;
  const float lose_total = 1.f + lose.rest_sum;
  out.rest_sum = win.rest_sum + scale * lose_total;
  out.rest_sq = win.rest_sq + scale * scale * (1.f + lose.rest_sq);
  out.ent_term = win.ent_term + scale * (lose.ent_term + shift * lose_total);
  return out;
}

// Adds one element; the online update is a merge with a one-element state.
C10_HOST_DEVICE inline void push(SoftmaxState& state, float z, int64_t index) {
  if (z != z) {
    state.nan = true;
    return;
  }
  state = merge(state,
                SoftmaxState{z, index, neg_inf(), 0.f, 0.f, 0.f, false});
}

// The state of the N logits v held in registers, in two passes as the
// AVX-512 sweeps and quack's softmax do: the maximum first, then the exp
// sums relative to it; one merge per N logits instead of one per element
// (push). v comes in groups of G adjacent columns, group g starting at
// column first + g * step (step >= G: a thread's 16-byte chunks of a row
// read by TPR threads); the caller fills columns past the row with -inf,
// which adds exactly 0 (e^-128 is 0 in float, and 0 times the clamped d is
// 0), and v[0] is a real column. Constant bounds and no guards: fully
// unrolled (tests/test_cuda_build.py counts the GPU's instructions per logit).
template <int N, int G>
C10_HOST_DEVICE inline SoftmaxState fold_values(const float (&v)[N], int64_t first, int64_t step) {
  static_assert(N % G == 0, "whole groups");
  SoftmaxState s = empty_state();
  float top = neg_inf();
  int arg = -1;
  bool nan = false;
  for (int i = 0; i < N; ++i) {
    nan = nan || v[i] != v[i];
    if (v[i] > top) {  // strict, in column order: the lowest index of a tie
      top = v[i];
      arg = i;
    }
  }
  if (nan) {
    s.nan = true;
    return s;
  }
  if (arg < 0) {  // only -inf: push's state of its first element
    s.argmax = first;
    return s;
  }
  s.max = top;
  s.argmax = first + static_cast<int64_t>(arg / G) * step + arg % G;
  if (!(top < -neg_inf())) return s;  // +inf: finalize gives NaN; no inf - inf here
  float second = neg_inf(), rest_sum = 0.f, rest_sq = 0.f, ent = 0.f;
  for (int i = 0; i < N; ++i) {
    const float z = i == arg ? neg_inf() : v[i];  // the argmax stays out of the sums
    second = fmaxf(second, z);  // a duplicate of the max counts
    const float d = fmaxf(z - top, -128.f);  // -inf: e = 0 and e d = 0, not NaN
    const float e = exp_of_nonpositive(d);
    rest_sum += e;
    rest_sq += e * e;
    ent += e * d;
  }
  s.second = second;
  s.rest_sum = rest_sum;
  s.rest_sq = rest_sq;
  s.ent_term = ent;
  return s;
}

// One score of a finished row. `label` < 0 means "no label"; label methods
// then give NaN (the host checks labels first, so this only happens when the
// caller turned the check off). `label_logit` is row[label].
C10_HOST_DEVICE inline float finalize(const SoftmaxState& s, int64_t method,
                                      int64_t label, float label_logit) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // NaN anywhere, a +inf logit, or a row of only -inf: softmax is undefined.
  if (s.nan || !(s.max > neg_inf() && s.max < -neg_inf())) return nan;
  if (method_needs_label(method) && label < 0) return nan;
  const float total = 1.f + s.rest_sum;
  const bool label_is_top = label == s.argmax;
  switch (method) {
    case kEntropy:  // -sum p log p = log S - sum e d / S
      return log1pf(s.rest_sum) - s.ent_term / total;
    case kLoss:  // logsumexp(z) - z_y
      return log1pf(s.rest_sum) - (label_logit - s.max);
    case kLeastConfidence:  // 1 - p1
      return s.rest_sum / total;
    case kMargin:  // 1 - (p1 - p2)
      return (s.rest_sum + expf(s.second - s.max)) / total;
    case kEl2n: {  // ||p - onehot(y)||_2 = sqrt((1 - p_y)^2 + sum_{k!=y} p_k^2)
      if (label_is_top)
        return sqrtf(s.rest_sum * s.rest_sum + s.rest_sq) / total;
      const float e_y = expf(label_logit - s.max);
      const float miss = 1.f + s.rest_sum - e_y;  // S (1 - p_y)
      const float others_sq = 1.f + s.rest_sq - e_y * e_y;
      return sqrtf(fmaxf(miss * miss + others_sq, 0.f)) / total;
    }
    case kTrueMargin:  // -(p_y - max_{k!=y} p_k); C = 1 counts the max as 0
      if (label_is_top) return expm1f(s.second - s.max) / total;
      return -expm1f(label_logit - s.max) / total;
    case kCorrect:
      return label_is_top ? 1.f : 0.f;
    case kLogitGap:  // max_{k!=y} z_k - z_y (minus AUM's margin); -inf when C = 1
      return (label_is_top ? s.second : s.max) - label_logit;
    default:
      return nan;
  }
}

// ---- The training loss of fused_loss.py: one kernel per row writes the
// loss, the statistics and the gradient of the loss by the logits.

// Columns of the statistics, fused_loss.STATS order.
constexpr int kNumLossStats = 8;

// The target (1 - eps) onehot(y) + eps / C, each term rounded once from
// double (eps / C in float would round twice: a visible bias at eps / C).
struct LossTarget {
  float eps;
  float smooth;  // eps / C
  float hit;     // 1 - eps
};

inline LossTarget loss_target(double eps, int64_t classes) {
  return LossTarget{static_cast<float>(eps), static_cast<float>(eps / static_cast<double>(classes)),
                    static_cast<float>(1.0 - eps)};
}

// What the gradient sweep needs of a finished row: softmax is
// exp(z - max) / S.
struct LossRow {
  bool defined;     // the row's softmax is defined and its label in [0, C)
  float max;        // the row maximum
  float inv_total;  // 1 / S, S = sum exp(z - max)
  float smooth;     // eps / C
  float hit;        // 1 - eps
};

C10_HOST_DEVICE inline LossRow loss_row(const SoftmaxState& s, int64_t label, const LossTarget& target) {
  const bool defined = !s.nan && s.max > neg_inf() && s.max < -neg_inf() && label >= 0;
  return LossRow{defined, s.max, 1.f / (1.f + s.rest_sum), target.smooth, target.hit};
}

// d loss / d z for one logit: softmax(z) - target; NaN for an undefined row.
// exp(-inf) = 0, so a -inf logit gets the gradient -target.
C10_HOST_DEVICE inline float loss_gradient(const LossRow& r, float z, bool is_label) {
  if (!r.defined) return std::numeric_limits<float>::quiet_NaN();
  return exp_of_nonpositive(z - r.max) * r.inv_total - r.smooth - (is_label ? r.hit : 0.f);
}

// The smoothed loss and the statistics of a finished row. `mean_d` is the
// mean of z - max over the row (only read when eps > 0): the smoothing term
// eps (logsumexp(z) - mean(z)) = eps (log S - mean_d) without the max's
// cancellation. Statistics: p_true, correct, true_margin, margin, entropy,
// el2n, loss (unsmoothed), logit_margin = z_y - max_{k != y} z_k.
C10_HOST_DEVICE inline float loss_and_stats(const SoftmaxState& s, int64_t label,
                                            float label_logit, const LossTarget& target,
                                            float mean_d, float* stats) {
  const float nll = finalize(s, kLoss, label, label_logit);
  stats[0] = expf(-nll);
  stats[1] = finalize(s, kCorrect, label, label_logit);
  stats[2] = finalize(s, kTrueMargin, label, label_logit);
  stats[3] = finalize(s, kMargin, label, label_logit);
  stats[4] = finalize(s, kEntropy, label, label_logit);
  stats[5] = finalize(s, kEl2n, label, label_logit);
  stats[6] = nll;
  stats[7] = -finalize(s, kLogitGap, label, label_logit);
  if (target.eps == 0.f) return nll;
  return target.hit * nll + target.eps * (log1pf(s.rest_sum) - mean_d);
}

}  // namespace unseen_fast
