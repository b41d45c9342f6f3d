// Host side of the CUDA select_topk and normalize ops, compiled by the C++
// compiler: argument checks, allocation, and the radix-select passes driven
// through the launchers of launch.h.
//
// Radix select with the shared host step (pick_bucket, select_math.h): each
// pass is one histogram kernel over the keys, a copy of the 256 counts (per
// class when balanced) to the host, and the bucket choice there. Compaction
// uses cumulative sums and nonzero(), which give ascending indices: the
// result is the same on every run and matches the CPU kernel bit for bit.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../select_math.h"
#include "launch.h"

namespace unseen_fast {
namespace {

// The launchers of one key width: uint32 keys for float32, uint64 for float64.
template <typename F>
struct Launchers;

template <>
struct Launchers<float> {
  using Key = uint32_t;
  static constexpr auto keys = cuda::launch_keys_f32;
  static constexpr auto histogram = cuda::launch_histogram_u32;
  static constexpr auto classify = cuda::launch_classify_u32;
};

template <>
struct Launchers<double> {
  using Key = uint64_t;
  static constexpr auto keys = cuda::launch_keys_f64;
  static constexpr auto histogram = cuda::launch_histogram_u64;
  static constexpr auto classify = cuda::launch_classify_u64;
};

template <typename F>
at::Tensor select_typed(const at::Tensor& scores_in, int64_t k, const at::Tensor& labels_in,
                        bool balanced, const at::Tensor& exclude_in, bool sorted) {
  using L = Launchers<F>;
  using K = typename L::Key;
  const auto key_dtype = sizeof(K) == 4 ? at::kInt : at::kLong;  // raw storage for K
  const at::Tensor scores = scores_in.contiguous();
  const int64_t N = scores.size(0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = scores.options();
  if (k == 0) return at::empty({0}, opts.dtype(at::kLong));
  const at::Tensor exclude = exclude_in.defined() ? exclude_in.contiguous() : exclude_in;
  at::Tensor keys = at::empty({N}, opts.dtype(key_dtype));
  K* keys_ptr = reinterpret_cast<K*>(keys.data_ptr());
  C10_CUDA_CHECK(L::keys(scores.const_data_ptr<F>(),
                         exclude.defined() ? exclude.const_data_ptr<bool>() : nullptr, N,
                         keys_ptr, stream));

  // Classes and their quotas (one class when not balanced).
  at::Tensor labels;
  std::vector<int64_t> quotas{k};
  if (balanced) {
    labels = labels_in.contiguous();
    at::Tensor eligible_labels =
        exclude.defined() ? labels.masked_select(exclude.logical_not()) : labels;
    const at::Tensor counts_cpu =
        at::bincount(eligible_labels, {}, labels.max().item<int64_t>() + 1).cpu();
    std::vector<int64_t> counts(counts_cpu.const_data_ptr<int64_t>(),
                                counts_cpu.const_data_ptr<int64_t>() + counts_cpu.numel());
    quotas = largest_remainder_quotas(counts, k);
  }
  const int64_t n_classes = static_cast<int64_t>(quotas.size());
  const int64_t* label_ptr = balanced ? labels.const_data_ptr<int64_t>() : nullptr;

  // Radix passes: per class, the digit of its quota-th largest key.
  std::vector<K> prefix(n_classes, 0);
  std::vector<int64_t> need = quotas;
  K mask = 0;
  const auto host_keys = at::TensorOptions().dtype(key_dtype);
  at::Tensor prefix_dev = at::empty({n_classes}, opts.dtype(key_dtype));
  at::Tensor hist = at::empty({n_classes, kRadixBuckets}, opts.dtype(at::kLong));
  for (int shift = int(sizeof(K)) * 8 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    prefix_dev.copy_(at::from_blob(prefix.data(), {n_classes}, host_keys));
    hist.zero_();
    C10_CUDA_CHECK(L::histogram(keys_ptr, label_ptr, N,
                                reinterpret_cast<const K*>(prefix_dev.const_data_ptr()), mask,
                                shift,
                                reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>()),
                                stream));
    const at::Tensor h = hist.cpu();
    for (int64_t c = 0; c < n_classes; ++c) {
      if (quotas[c] == 0) continue;
      const int bucket = pick_bucket(h.const_data_ptr<int64_t>() + c * kRadixBuckets, need[c]);
      prefix[c] |= K(bucket) << shift;
    }
    mask |= K(kRadixBuckets - 1) << shift;
  }
  // Classes with quota 0 take nothing: threshold above every key.
  for (int64_t c = 0; c < n_classes; ++c)
    if (quotas[c] == 0) prefix[c] = ~K(0), need[c] = 0;
  prefix_dev.copy_(at::from_blob(prefix.data(), {n_classes}, host_keys));

  at::Tensor above = at::empty({N}, opts.dtype(at::kBool));
  at::Tensor equal = at::empty({N}, opts.dtype(at::kBool));
  C10_CUDA_CHECK(L::classify(keys_ptr, label_ptr, N,
                             reinterpret_cast<const K*>(prefix_dev.const_data_ptr()),
                             above.data_ptr<bool>(), equal.data_ptr<bool>(), stream));
  // Keys equal to the threshold: the lowest indices of each class, up to need.
  const at::Tensor need_dev = at::tensor(need, opts.dtype(at::kLong));
  const at::Tensor tie_idx = equal.nonzero().select(1, 0);
  at::Tensor tie_rank, tie_class;
  if (balanced) {
    tie_class = labels.index_select(0, tie_idx);
    const auto sorted_cls = at::sort(tie_class, /*stable=*/true, 0, false);
    const at::Tensor cls_sorted = std::get<0>(sorted_cls);
    const at::Tensor first = at::searchsorted(cls_sorted, cls_sorted);
    const at::Tensor rank_sorted = at::arange(tie_idx.size(0), opts.dtype(at::kLong)) - first;
    tie_rank = at::empty_like(rank_sorted).index_put_({std::get<1>(sorted_cls)}, rank_sorted);
  } else {
    tie_class = at::zeros_like(tie_idx);
    tie_rank = at::arange(tie_idx.size(0), opts.dtype(at::kLong));
  }
  above.index_put_({tie_idx}, tie_rank.lt(need_dev.index_select(0, tie_class)));
  at::Tensor out = above.nonzero().select(1, 0).contiguous();
  if (sorted) {
    const auto order =
        std::get<1>(at::sort(scores.index_select(0, out), /*stable=*/true, 0, true));
    out = out.index_select(0, order);
  }
  return out;
}

at::Tensor select_topk_cuda(const at::Tensor& scores, int64_t k,
                            const c10::optional<at::Tensor>& labels, bool balanced,
                            const c10::optional<at::Tensor>& exclude, bool sorted) {
  check_select_args(scores, k, labels, balanced, exclude);
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor y = labels.value_or(at::Tensor());
  const at::Tensor ex = exclude.value_or(at::Tensor());
  if (scores.scalar_type() == at::kDouble)
    return select_typed<double>(scores, k, y, balanced, ex, sorted);
  return select_typed<float>(scores, k, y, balanced, ex, sorted);
}

at::Tensor normalize_cuda(const at::Tensor& scores) {
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
              "normalize: scores must be float32 or float64, got ", scores.scalar_type());
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor wide = scores.to(at::kDouble);
  // ATen's CUDA reduction uses a fixed tree (no float atomics): same total each run.
  const double total = wide.sum().item<double>();
  check_normalize_total(scores, total);
  return wide.div_(total).to(scores.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CUDA, m) {
  m.impl("select_topk", &select_topk_cuda);
  m.impl("normalize", &normalize_cuda);
}

}  // namespace unseen_fast
