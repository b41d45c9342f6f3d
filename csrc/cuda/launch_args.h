// Host side only (ATen): the argument checks, the outputs and the launch
// structs (launch.h) of the CUDA ops, shared by the ops (*_ops.cpp) and the
// emulated kernels of the tests (tests/cuda_emulated), so both run the same
// host code up to the launch.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <tuple>

#include "../checks.h"
#include "launch.h"

namespace unseen_fast::cuda {

// Only the three dtypes check_score_args admits reach here.
inline Element element_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return Element::kFloat32;
    case at::kBFloat16:
      return Element::kBFloat16;
    default:
      return Element::kFloat16;
  }
}

// Whether the kernels may read rows with 16-byte loads: adjacent columns, the
// base and every row start 16-byte aligned.
inline bool rows_are_aligned(const at::Tensor& logits) {
  return logits.stride(1) == 1 && reinterpret_cast<uintptr_t>(logits.const_data_ptr()) % 16 == 0 &&
         (logits.stride(0) * logits.element_size()) % 16 == 0;
}

// Whether score stages a block's rows through shared memory as one tile:
// few columns, contiguous rows, a 16-byte aligned base (a block's 256 rows
// then start 16-byte aligned too), and a row pitch that is not a multiple of
// 16 bytes. Such rows (C = 10 float32: 40 bytes) cannot be read with 16-byte
// loads in place, and threads reading them from shared memory meet at most
// 2-way bank conflicts; rows of 16-byte multiples (C = 16 float32: up to
// 16-way conflicts there) are read in place with 16-byte loads instead.
inline bool rows_form_tiles(const at::Tensor& logits) {
  return logits.size(1) <= kOneThreadMaxCols && logits.is_contiguous() &&
         reinterpret_cast<uintptr_t>(logits.const_data_ptr()) % 16 == 0 &&
         (logits.size(1) * logits.element_size()) % 16 != 0;
}

struct ScoreCall {
  at::Tensor out;     // [N, M] float32
  at::Tensor labels;  // kept alive until the launch
  ScoreLaunch launch;
  bool empty() const { return launch.rows == 0 || launch.num_methods == 0; }
};

inline ScoreCall prepare_score(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                               at::IntArrayRef methods, bool check_labels) {
  check_score_args(logits, labels, methods, check_labels);
  const int64_t N = logits.size(0);
  const int64_t M = static_cast<int64_t>(methods.size());
  TORCH_CHECK(M <= kMaxScoreMethods, "score: at most ", kMaxScoreMethods, " methods per call on CUDA, got ", M);
  TORCH_CHECK(N <= INT32_MAX, "score: N=", N, " rows is more than 2^31 - 1 on CUDA; split it");
  ScoreCall call;
  call.out = at::empty({N, M}, logits.options().dtype(at::kFloat));
  uint64_t packed = 0;
  for (int64_t j = 0; j < M; ++j) packed |= static_cast<uint64_t>(methods[j]) << (4 * j);
  static_assert(kNumMethods <= 16, "method codes are packed in 4 bits");
  call.labels = labels.has_value() ? labels->contiguous() : at::Tensor();
  call.launch = ScoreLaunch{logits.const_data_ptr(), element_of(logits.scalar_type()), N, logits.size(1),
                            logits.stride(0), logits.stride(1), rows_are_aligned(logits), rows_form_tiles(logits),
                            call.labels.defined() ? call.labels.const_data_ptr<int64_t>() : nullptr, packed,
                            static_cast<int>(M), call.out.data_ptr<float>()};
  return call;
}

struct LossCall {
  at::Tensor loss, stats, grad;  // [N], [N, kNumLossStats], [N, C]
  at::Tensor labels;             // kept alive until the launch
  LossLaunch launch;
};

inline LossCall prepare_loss(const at::Tensor& logits, const at::Tensor& labels, double label_smoothing,
                             bool check_labels) {
  check_loss_args(logits, labels, label_smoothing, check_labels);
  const int64_t N = logits.size(0), C = logits.size(1);
  TORCH_CHECK(N <= INT32_MAX, "cross_entropy_with_stats: N=", N, " rows is more than 2^31 - 1 on CUDA; split it");
  LossCall call;
  call.loss = at::empty({N}, logits.options().dtype(at::kFloat));
  call.stats = at::empty({N, kNumLossStats}, logits.options().dtype(at::kFloat));
  call.grad = at::empty({N, C}, logits.options().dtype(loss_gradient_dtype(logits.scalar_type())));
  call.labels = labels.contiguous();
  call.launch = LossLaunch{logits.const_data_ptr(), element_of(logits.scalar_type()), N, C,
                           logits.stride(0), logits.stride(1), rows_are_aligned(logits),
                           call.labels.const_data_ptr<int64_t>(), loss_target(label_smoothing, C),
                           call.loss.data_ptr<float>(), call.stats.data_ptr<float>(), call.grad.data_ptr()};
  return call;
}

struct SelectCall {
  at::Tensor out;                            // [k] int64, ascending index order
  at::Tensor errors;                         // [kNumSelectErrors] int64 (select_math.h)
  at::Tensor scores, labels, exclude;        // contiguous, kept alive until the launch
  at::Tensor hist, groups, tile_counts;      // device workspace
  SelectLaunch launch;
};

// `groups`: the number of classes when balanced (labels must lie below it),
// else 1. Checks nothing that needs the data.
inline SelectCall prepare_select(const at::Tensor& scores, int64_t k, const at::Tensor& labels, bool balanced,
                                 const at::Tensor& exclude, int64_t groups) {
  const int64_t N = scores.size(0);
  TORCH_CHECK(N <= INT32_MAX, "select_topk: N=", N, " samples is more than 2^31 - 1 on CUDA; split it");
  TORCH_CHECK(groups >= 1 && groups <= INT32_MAX, "select_topk: ", groups, " classes is out of range");
  SelectCall call;
  call.scores = scores.contiguous();
  call.labels = labels.defined() ? labels.contiguous() : labels;
  call.exclude = exclude.defined() ? exclude.contiguous() : exclude;
  const auto opts = scores.options();
  call.out = at::empty({k}, opts.dtype(at::kLong));
  call.errors = at::empty({kNumSelectErrors}, opts.dtype(at::kLong));
  call.hist = at::empty({groups * 2048}, opts.dtype(at::kInt));
  call.groups = at::empty({groups * static_cast<int64_t>(sizeof(SelectGroup))}, opts.dtype(at::kByte));
  call.tile_counts = at::empty({std::max<int64_t>(select_tiles(N), 1)}, opts.dtype(at::kInt));
  call.launch = SelectLaunch{call.scores.const_data_ptr(), scores.scalar_type() == at::kDouble, N, k,
                             call.exclude.defined() ? call.exclude.const_data_ptr<bool>() : nullptr,
                             call.labels.defined() ? call.labels.const_data_ptr<int64_t>() : nullptr, balanced,
                             groups, reinterpret_cast<unsigned*>(call.hist.data_ptr<int>()),
                             reinterpret_cast<SelectGroup*>(call.groups.data_ptr<uint8_t>()),
                             reinterpret_cast<unsigned*>(call.tile_counts.data_ptr<int>()),
                             call.errors.data_ptr<int64_t>(), call.out.data_ptr<int64_t>()};
  return call;
}

// select_topk_deferred's host part up to the launch: checks only what the
// host knows (shapes, k <= N: so index 0 exists when k > 0).
inline SelectCall prepare_deferred_select(const at::Tensor& scores, int64_t k, const c10::optional<at::Tensor>& labels,
                                          bool balanced, const c10::optional<at::Tensor>& exclude,
                                          int64_t num_classes) {
  check_select_shapes(scores, k, labels, balanced, exclude);
  TORCH_CHECK(!balanced || num_classes >= 1, "select_topk: balanced selection needs num_classes >= 1, got ",
              num_classes);
  const int64_t N = scores.size(0);
  TORCH_CHECK(k <= N, "select_topk: k=", k, " is more than the ", N, " eligible samples (N=", N, ")");
  SelectCall call = prepare_select(scores, k, labels.value_or(at::Tensor()), balanced,
                                   exclude.value_or(at::Tensor()), balanced ? num_classes : 1);
  // Bad input (reported only by the later check) leaves slots without a winner: zeros there keep
  // the sort's index_select and the caller inside [0, N), where empty memory could assert on device.
  call.out.zero_();
  return call;
}

// int64 keys in the scores' order (-0.0 == +0.0): float32 through its bits,
// float64 through the signed-magnitude flip.
inline at::Tensor order_keys(const at::Tensor& scores) {
  const at::Tensor positive_zero = at::where(scores == 0, at::zeros_like(scores), scores);
  if (scores.scalar_type() == at::kFloat) {
    const at::Tensor bits = positive_zero.view(at::kInt).to(at::kLong);  // sign-extended
    return at::bitwise_xor(bits, at::bitwise_and(bits.__rshift__(31), 0x7fffffff));
  }
  const at::Tensor bits = positive_zero.view(at::kLong);
  return at::bitwise_xor(bits, at::bitwise_and(bits.__rshift__(63), std::numeric_limits<int64_t>::max()));
}

// The winners (ascending index) in descending score order, ties in index
// order: a stable sort of their keys, no host sync.
inline at::Tensor by_descending_score(const at::Tensor& scores, const at::Tensor& winners) {
  const at::Tensor keys = order_keys(scores.index_select(0, winners));
  return winners.index_select(0, std::get<1>(keys.sort(/*stable=*/true, 0, /*descending=*/true)));
}

struct LutCall {
  at::Tensor out;                    // pixels.shape, the table's dtype
  at::Tensor pixels, table;          // contiguous, kept alive until the launch
  LutLaunch launch;                  // launch.max_blocks: the default cap (tests lower it)
};

inline LutCall prepare_lut(const at::Tensor& pixels, const at::Tensor& table) {
  check_lut_args(pixels, table);
  TORCH_CHECK(table.size(1) <= INT32_MAX / 256, "apply_lut: ", table.size(1), " channels is too many");
  LutCall call;
  call.pixels = pixels.contiguous();
  call.table = table.contiguous();
  call.out = at::empty(pixels.sizes(), table.options());
  call.launch = LutLaunch{call.pixels.const_data_ptr<uint8_t>(), call.pixels.numel(), table.size(1),
                          call.table.const_data_ptr(), static_cast<int>(table.element_size()), call.out.data_ptr(),
                          0};
  return call;
}

}  // namespace unseen_fast::cuda
