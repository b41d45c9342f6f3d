// Every op schema of the unseen_fast namespace, in one place. Kernels are
// registered per backend in cpu/ and cuda/ (a CPU-only build leaves cuda/ out).
#include <torch/library.h>

#include "checks.h"

TORCH_LIBRARY(unseen_fast, m) {
  // Per-row softmax scores [N, len(methods)] float32 from one read of logits.
  m.def("score(Tensor logits, Tensor? labels, int[] methods, bool check_labels=True) -> Tensor");
  // Test hook: the same scores, each row built by a random tree of state
  // merges (CPU only). Checks that the merge is a proper reduction.
  m.def("_score_tree(Tensor logits, Tensor? labels, int[] methods, int seed) -> Tensor");
  // The training loss of fused_loss.py: per-sample loss [N] and statistics
  // [N, 8] float32, and d loss_i / d logits_i [N, C] (bfloat16 for bfloat16
  // logits, else float32) from one kernel, so backward is a scale.
  m.def("cross_entropy_with_stats(Tensor logits, Tensor labels, float label_smoothing, bool check_labels) -> (Tensor, Tensor, Tensor)");
  // scores / sum(scores), the sum taken in float64 in a fixed order.
  m.def("normalize(Tensor scores) -> Tensor");
  // Indices of the k highest scores, ties to the lower index.
  m.def("select_topk(Tensor scores, int k, Tensor? labels, bool balanced, Tensor? exclude, bool sorted) -> Tensor");
  // The same selection without waiting for the device: bad input (NaN, labels
  // out of [0, num_classes), k above the eligible count) is recorded in
  // `errors` (select_math.h: SelectError) and raised by check_select_errors,
  // which reads it. On the CPU bad input raises at once.
  m.def("select_topk_deferred(Tensor scores, int k, Tensor? labels, bool balanced, Tensor? exclude, bool sorted,"
        " int num_classes) -> (Tensor indices, Tensor errors)");
  m.def("check_select_errors(Tensor errors, Tensor? labels, int k, int n, int num_classes) -> ()");
  // out[..., c] = table[pixels[..., c], c]: uint8 pixels (channels last) to
  // normalized floats in one pass (CPU; other devices use plain torch ops).
  m.def("apply_lut(Tensor pixels, Tensor table) -> Tensor");
}

namespace {

void check_select_errors_op(const at::Tensor& errors, const c10::optional<at::Tensor>& labels, int64_t k,
                            int64_t n, int64_t num_classes) {
  unseen_fast::check_select_errors(errors, labels, k, n, num_classes);
}

}  // namespace

// Device-independent: one host read of what select_topk_deferred recorded.
TORCH_LIBRARY_IMPL(unseen_fast, CompositeExplicitAutograd, m) {
  m.impl("check_select_errors", &check_select_errors_op);
}
