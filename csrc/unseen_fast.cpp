// Every op schema of the unseen_fast namespace, in one place. Kernels are
// registered per backend in cpu/ and cuda/ (a CPU-only build leaves cuda/ out).
#include <torch/library.h>

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
  // out[..., c] = table[pixels[..., c], c]: uint8 pixels (channels last) to
  // normalized floats in one pass (CPU; other devices use plain torch ops).
  m.def("apply_lut(Tensor pixels, Tensor table) -> Tensor");
}
