// Argument checks shared by the CPU and CUDA kernels, so both backends reject
// bad input with the same message.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "score_math.h"
#include "select_math.h"

namespace unseen_fast {

// `op` names the caller in every message (score, cross_entropy_with_stats).
inline void check_score_args(const at::Tensor& logits,
                             const c10::optional<at::Tensor>& labels,
                             at::IntArrayRef methods, bool check_labels,
                             const char* op = "score") {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [N, C], got shape ",
              logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              op, ": logits must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(logits.size(1) >= 1 || logits.size(0) == 0,
              op, ": logits have C=0 classes; need C >= 1");
  TORCH_CHECK(logits.size(1) <= INT32_MAX, op, ": C=", logits.size(1),
              " classes is more than 2^31 - 1");
  bool needs_label = false;
  for (const int64_t m : methods) {
    TORCH_CHECK(m >= 0 && m < kNumMethods, op, ": unknown method code ", m);
    needs_label = needs_label || method_needs_label(m);
  }
  if (!labels.has_value()) {
    for (const int64_t m : methods)
      TORCH_CHECK(!method_needs_label(m), op, ": method '", method_name(m),
                  "' needs labels, but labels=None");
    return;
  }
  const at::Tensor& y = *labels;
  TORCH_CHECK(y.dim() == 1 && y.size(0) == logits.size(0),
              op, ": labels must have shape [N]=[", logits.size(0), "], got ",
              y.sizes());
  TORCH_CHECK(y.scalar_type() == at::kLong, op, ": labels must be int64, got ",
              y.scalar_type());
  TORCH_CHECK(y.device() == logits.device(), op, ": labels are on ", y.device(),
              " but logits are on ", logits.device());
  if (!check_labels || !needs_label || y.numel() == 0) return;
  // One reduction; on CUDA this is the only host sync of score, and
  // check_labels=False skips it (bad rows then score NaN, never out of bounds).
  const auto bad = y.lt(0).logical_or_(y.ge(logits.size(1)));
  if (bad.any().item<bool>()) {
    const int64_t row = bad.nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK(false, op, ": label ", y[row].item<int64_t>(), " at row ", row,
                " is outside [0, C) with C=", logits.size(1));
  }
}


// The fused training loss: the score checks (labels required), eps in [0, 1).
inline void check_loss_args(const at::Tensor& logits, const at::Tensor& labels,
                            double label_smoothing, bool check_labels) {
  const int64_t loss_method[] = {kLoss};
  check_score_args(logits, labels, loss_method, check_labels, "cross_entropy_with_stats");
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing < 1,
              "cross_entropy_with_stats: label_smoothing must be in [0, 1), got ", label_smoothing);
}

// The gradient's dtype: bfloat16 logits keep bfloat16 (same exponent range as
// float32); float16 gets float32, because an unscaled float16 gradient would
// flush the small probabilities that GradScaler's scale exists to keep.
inline at::ScalarType loss_gradient_dtype(at::ScalarType logits) {
  return logits == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

}  // namespace unseen_fast

namespace unseen_fast {

// A per-sample tensor that goes with select_topk's scores: 1-D, N long, its
// dtype, on the scores' device.
inline void check_companion(const at::Tensor& t, at::ScalarType dtype, const char* name,
                            const char* kind, const at::Tensor& scores) {
  const int64_t N = scores.size(0);
  TORCH_CHECK(t.scalar_type() == dtype && t.dim() == 1 && t.size(0) == N, "select_topk: ",
              name, " must be ", kind, " tensor of shape [N]=[", N, "], got ",
              t.scalar_type(), " of shape ", t.sizes());
  TORCH_CHECK(t.device() == scores.device(), "select_topk: ", name,
              " must be on the scores' device ", scores.device(), ", got ", t.device());
}

// Every data-dependent fact the select_topk checks need, read in one host
// copy (the only host sync of a CUDA select_topk).
struct SelectFacts {
  int64_t num_classes = 0;  // labels' max + 1 (0 without labels or samples)
  int64_t eligible = 0;     // samples not excluded
};

// What can be checked without reading the data.
inline void check_select_shapes(const at::Tensor& scores, int64_t k, const c10::optional<at::Tensor>& labels,
                                bool balanced, const c10::optional<at::Tensor>& exclude) {
  TORCH_CHECK(scores.dim() == 1, "select_topk: scores must be 1-D [N], got shape ",
              scores.sizes());
  const auto dtype = scores.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "select_topk: scores must be float32 or float64, got ", dtype);
  TORCH_CHECK(k >= 0, "select_topk: k must be >= 0, got k=", k);
  if (exclude.has_value()) check_companion(*exclude, at::kBool, "exclude", "a bool", scores);
  TORCH_CHECK(!balanced || labels.has_value(), "select_topk: balanced=True needs labels");
  if (labels.has_value()) check_companion(*labels, at::kLong, "labels", "an int64", scores);
}

inline SelectFacts check_select_args(const at::Tensor& scores, int64_t k,
                                     const c10::optional<at::Tensor>& labels, bool balanced,
                                     const c10::optional<at::Tensor>& exclude) {
  check_select_shapes(scores, k, labels, balanced, exclude);
  const int64_t N = scores.size(0);
  SelectFacts facts;
  int64_t excluded = 0;
  if (N > 0) {
    // [NaN count, first NaN, excluded count, label min, first negative label's index and value, label max]
    const auto opts = scores.options().dtype(at::kLong);
    const at::Tensor nan = at::isnan(scores);
    std::vector<at::Tensor> parts{nan.sum().to(at::kLong), nan.to(at::kByte).argmax(),
                                  exclude.has_value() ? exclude->sum().to(at::kLong) : at::zeros({}, opts)};
    if (labels.has_value()) {
      const at::Tensor first_negative = labels->lt(0).to(at::kByte).argmax();
      parts.push_back(labels->min());
      parts.push_back(first_negative);
      parts.push_back(labels->index_select(0, first_negative.reshape({1})).reshape({}));
      parts.push_back(labels->max());
    }
    const at::Tensor host = at::stack(parts).cpu();
    const int64_t* f = host.const_data_ptr<int64_t>();
    TORCH_CHECK(f[0] == 0, "select_topk: score at index ", f[1], " is NaN");
    excluded = f[2];
    if (labels.has_value()) {
      TORCH_CHECK(f[3] >= 0, "select_topk: label ", f[5], " at index ", f[4], " is negative");
      facts.num_classes = f[6] + 1;
    }
  }
  TORCH_CHECK(k <= N - excluded, "select_topk: k=", k, " is more than the ", N - excluded,
              " eligible samples (N=", N, ", excluded ", excluded, ")");
  facts.eligible = N - excluded;
  return facts;
}

// The errors a select that did not wait recorded (select_math.h:
// SelectError), read now (one host copy), with check_select_args' messages.
inline void check_select_errors(const at::Tensor& errors, const c10::optional<at::Tensor>& labels, int64_t k,
                                int64_t n, int64_t num_classes) {
  TORCH_CHECK(errors.scalar_type() == at::kLong && errors.dim() == 1 && errors.size(0) == kNumSelectErrors,
              "check_select_errors: errors must be the int64 [", int(kNumSelectErrors),
              "] tensor that select_topk_deferred returned, got ", errors.scalar_type(), " of shape ", errors.sizes());
  const at::Tensor host = errors.cpu();
  const int64_t* e = host.const_data_ptr<int64_t>();
  const int64_t none = std::numeric_limits<int64_t>::max();
  TORCH_CHECK(e[kFirstNan] == none, "select_topk: score at index ", e[kFirstNan], " is NaN");
  if (e[kFirstNegativeLabel] != none && labels.has_value()) {
    const int64_t label = labels->select(0, e[kFirstNegativeLabel]).item<int64_t>();
    TORCH_CHECK(false, "select_topk: label ", label, " at index ", e[kFirstNegativeLabel], " is negative");
  }
  TORCH_CHECK(e[kFirstLabelBeyond] == none, "select_topk: label at index ", e[kFirstLabelBeyond],
              " is not below num_classes=", num_classes);
  TORCH_CHECK(k <= e[kEligible], "select_topk: k=", k, " is more than the ", e[kEligible],
              " eligible samples (N=", n, ")");
}

// apply_lut: uint8 pixels, channels last, a [256, C] table on their device.
inline void check_lut_args(const at::Tensor& pixels, const at::Tensor& table) {
  TORCH_CHECK(pixels.scalar_type() == at::kByte, "apply_lut: pixels must be uint8, got ",
              pixels.scalar_type());
  TORCH_CHECK(pixels.dim() >= 1, "apply_lut: pixels must have a channel dimension (last)");
  TORCH_CHECK(table.dim() == 2 && table.size(0) == 256 && table.size(1) == pixels.size(-1),
              "apply_lut: table must be [256, C] with C = pixels.shape[-1] = ", pixels.size(-1),
              ", got shape ", table.sizes());
  TORCH_CHECK(table.device() == pixels.device(), "apply_lut: table is on ", table.device(),
              " but pixels are on ", pixels.device());
  const auto dtype = table.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
              "apply_lut: table must be float32, float64, bfloat16 or float16, got ", dtype);
}

// Sum of normalize must be finite and positive; name the first bad score.
inline void check_normalize_total(const at::Tensor& scores, double total) {
  if (std::isfinite(total) && total > 0) return;
  const auto bad = at::isfinite(scores).logical_not_();
  if (bad.any().item<bool>()) {
    const int64_t i = bad.flatten().nonzero().select(1, 0)[0].item<int64_t>();
    TORCH_CHECK(false, "normalize: score at flat index ", i, " is ",
                scores.flatten()[i].item<double>(), "; scores must be finite");
  }
  TORCH_CHECK(false, "normalize: the scores sum to ", total,
              "; need a positive sum to normalize");
}

}  // namespace unseen_fast
