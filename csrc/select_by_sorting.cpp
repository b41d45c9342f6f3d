// select_topk from device-wide tensor ops: the CUDA implementation, also
// registered for the CPU as the test op _select_topk_by_sorting so that the
// exact code the GPU runs is checked here against the CPU radix kernel.
//
// Only ATen ops whose output size is known up front (topk, sort, cumsum,
// scatter_add, nonzero_static), so after the argument checks (one host read,
// checks.h) nothing waits for the device:
// - scores become order-preserving int64 keys (-0.0 == +0.0); excluded
//   samples get INT64_MIN, below every real key;
// - global: the k-th largest key T is the minimum of topk(keys, k); every key
//   above T is taken, and of the keys equal to T the first (lowest indices)
//   k - count(> T);
// - balanced: largest-remainder quotas computed on the device; one stable sort
//   by key (descending) then one by class gives each class's keys in
//   descending order, where its quota-th is its threshold; ties again to
//   the lowest indices of the class;
// - nonzero_static(size=k) writes the winners in ascending index order.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "select_by_sorting.h"

namespace unseen_fast {
namespace {

// int64 keys in the scores' order: float32 through its bits (monotone in
// [0, 2^32)), float64 through the signed-magnitude flip; zeros made +0.0 first.
at::Tensor order_keys(const at::Tensor& scores, const at::Tensor& exclude) {
  const at::Tensor positive_zero = at::where(scores == 0, at::zeros_like(scores), scores);
  at::Tensor keys;
  if (scores.scalar_type() == at::kFloat) {
    const at::Tensor bits = positive_zero.view(at::kInt).to(at::kLong);  // sign-extended
    // negative: flip the 31 magnitude bits (larger magnitude, smaller key); then shift to [0, 2^32)
    keys = at::bitwise_xor(bits, at::bitwise_and(bits.__rshift__(31), 0x7fffffff)) + (int64_t{1} << 31);
  } else {
    const at::Tensor bits = positive_zero.view(at::kLong);
    keys = at::bitwise_xor(bits, at::bitwise_and(bits.__rshift__(63), std::numeric_limits<int64_t>::max()));
  }
  if (exclude.defined()) keys.masked_fill_(exclude, std::numeric_limits<int64_t>::min());
  return keys;
}

// Of the candidates equal to their threshold, the first `need` of each group
// in index order: rank = how many equal ones come before, within the group.
at::Tensor first_ties(const at::Tensor& equal, const at::Tensor& group, const at::Tensor& need_per_sample,
                      int64_t groups) {
  if (groups == 1) {
    const at::Tensor rank = equal.to(at::kLong).cumsum(0) - equal.to(at::kLong);
    return equal & rank.lt(need_per_sample);
  }
  const at::Tensor by_group = std::get<1>(group.sort(/*stable=*/true, 0, /*descending=*/false));
  const at::Tensor eq_sorted = equal.index_select(0, by_group).to(at::kLong);
  const at::Tensor before = eq_sorted.cumsum(0) - eq_sorted;  // exclusive count, over all groups
  const at::Tensor sizes = at::zeros({groups}, group.options()).scatter_add_(0, group, at::ones_like(group));
  const at::Tensor starts = sizes.cumsum(0) - sizes;
  const at::Tensor base = before.index_select(0, starts.clamp_max(std::max<int64_t>(equal.size(0) - 1, 0)));
  const at::Tensor group_sorted = group.index_select(0, by_group);
  const at::Tensor rank_sorted = before - base.index_select(0, group_sorted);
  const at::Tensor rank = at::empty_like(rank_sorted).index_copy_(0, by_group, rank_sorted);
  return equal & rank.lt(need_per_sample);
}

// Largest-remainder split of k over classes in proportion to their eligible
// counts, ties to the lower class (select_math.h's rule), on the device.
at::Tensor device_quotas(const at::Tensor& counts, int64_t k) {
  const at::Tensor total = counts.sum();
  const at::Tensor base = at::div(counts * k, total, "floor");
  const at::Tensor remainder = (counts * k).remainder(total);
  const at::Tensor extra = k - base.sum();
  const at::Tensor order = std::get<1>(remainder.sort(/*stable=*/true, 0, /*descending=*/true));
  const at::Tensor place = at::empty_like(order).index_copy_(0, order, at::arange(order.size(0), order.options()));
  return base + place.lt(extra).to(at::kLong);
}

}  // namespace

at::Tensor select_topk_by_sorting(const at::Tensor& scores_in, int64_t k, const at::Tensor& labels_in,
                                  bool balanced, const at::Tensor& exclude_in, bool sorted,
                                  int64_t num_classes) {
  const at::Tensor scores = scores_in.contiguous();
  const auto long_opts = scores.options().dtype(at::kLong);
  if (k == 0) return at::empty({0}, long_opts);
  const at::Tensor exclude = exclude_in.defined() ? exclude_in.contiguous() : exclude_in;
  const at::Tensor keys = order_keys(scores, exclude);
  at::Tensor take;
  if (!balanced) {
    const at::Tensor threshold = std::get<0>(keys.topk(k, 0, true, /*sorted=*/false)).min();
    const at::Tensor above = keys.gt(threshold);
    const at::Tensor need = k - above.sum();
    take = above | first_ties(keys.eq(threshold), at::zeros_like(keys), need.expand_as(keys), 1);
  } else {
    const at::Tensor labels = labels_in.contiguous();
    const at::Tensor eligible = exclude.defined() ? exclude.logical_not().to(at::kLong) : at::ones_like(labels);
    const at::Tensor counts = at::zeros({num_classes}, long_opts).scatter_add_(0, labels, eligible);
    const at::Tensor quotas = device_quotas(counts, k);
    // each class's keys in descending order (ties: ascending index), classes ascending
    const at::Tensor by_key = std::get<1>(keys.sort(/*stable=*/true, 0, /*descending=*/true));
    const at::Tensor by_class = std::get<1>(labels.index_select(0, by_key).sort(true, 0, false));
    const at::Tensor ordered = by_key.index_select(0, by_class);
    const at::Tensor sizes = at::zeros({num_classes}, long_opts).scatter_add_(0, labels, at::ones_like(labels));
    const at::Tensor starts = sizes.cumsum(0) - sizes;
    const at::Tensor at_quota = (starts + quotas - 1).clamp(0, scores.size(0) - 1);
    const at::Tensor nothing = at::full({num_classes}, std::numeric_limits<int64_t>::max(), long_opts);
    const at::Tensor threshold =
        at::where(quotas.gt(0), keys.index_select(0, ordered.index_select(0, at_quota)), nothing);
    const at::Tensor own = threshold.index_select(0, labels);
    const at::Tensor above = keys.gt(own);
    const at::Tensor need = quotas - at::zeros_like(quotas).scatter_add_(0, labels, above.to(at::kLong));
    take = above | first_ties(keys.eq(own), labels, need.index_select(0, labels), num_classes);
  }
  at::Tensor out = at::nonzero_static(take, k, -1).select(1, 0).contiguous();
  if (sorted) {
    const at::Tensor order = std::get<1>(keys.index_select(0, out).sort(/*stable=*/true, 0, /*descending=*/true));
    out = out.index_select(0, order);
  }
  return out;
}

namespace {

at::Tensor select_topk_by_sorting_op(const at::Tensor& scores, int64_t k, const c10::optional<at::Tensor>& labels,
                                     bool balanced, const c10::optional<at::Tensor>& exclude, bool sorted) {
  const SelectFacts facts = check_select_args(scores, k, labels, balanced, exclude);
  return select_topk_by_sorting(scores, k, labels.value_or(at::Tensor()), balanced, exclude.value_or(at::Tensor()),
                                sorted, facts.num_classes);
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CompositeExplicitAutograd, m) {
  m.impl("_select_topk_by_sorting", &select_topk_by_sorting_op);
}

}  // namespace unseen_fast
