// CPU kernels of select_topk and normalize.
//
// select_topk is a radix select on order-preserving integer keys: four (eight
// for float64) histogram passes find the k-th largest key T and how many keys
// equal to T to take, then one stable compaction writes the indices in
// ascending order. Everything is integer counting over fixed chunks, so the
// result does not depend on the thread count. sorted=True adds a stable LSD
// radix sort of the k winners by descending key.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../select_math.h"

namespace unseen_fast {
namespace {

constexpr int64_t kChunk = 1 << 16;  // fixed work unit: thread-count independent

int64_t num_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Runs fn(chunk, begin, end) over fixed chunks of [0, n), in parallel when big.
template <typename Fn>
void for_chunks(int64_t n, const Fn& fn) {
  at::parallel_for(0, num_chunks(n), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) fn(c, c * kChunk, std::min(n, (c + 1) * kChunk));
  });
}

template <typename K>
struct Threshold {
  K key;         // the k-th largest key
  int64_t need;  // how many keys equal to `key` are taken (lowest indices)
};

// k-th largest of keys[0..n) for 1 <= k <= n.
template <typename K>
Threshold<K> radix_threshold(const K* keys, int64_t n, int64_t k) {
  K prefix = 0, mask = 0;
  int64_t need = k;
  const int64_t chunks = num_chunks(n);
  std::vector<std::array<int64_t, kRadixBuckets>> hists(chunks);
  for (int shift = int(sizeof(K)) * 8 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for_chunks(n, [&](int64_t c, int64_t b, int64_t e) {
      auto& h = hists[c];
      h.fill(0);
      for (int64_t i = b; i < e; ++i)
        if ((keys[i] & mask) == prefix) ++h[(keys[i] >> shift) & (kRadixBuckets - 1)];
    });
    std::array<int64_t, kRadixBuckets> hist{};
    for (const auto& h : hists)
      for (int j = 0; j < kRadixBuckets; ++j) hist[j] += h[j];
    const int bucket = pick_bucket(hist.data(), need);
    prefix |= K(bucket) << shift;
    mask |= K(kRadixBuckets - 1) << shift;
  }
  return {prefix, need};
}

// Writes, in ascending index order, every i with keys[i] > T and the first
// t.need with keys[i] == T. `ids` maps positions to sample indices (nullptr:
// identity). Returns the number written.
template <typename K>
int64_t compact(const K* keys, const int64_t* ids, int64_t n, Threshold<K> t, int64_t* out) {
  const int64_t chunks = num_chunks(n);
  std::vector<int64_t> n_gt(chunks), n_eq(chunks);
  for_chunks(n, [&](int64_t c, int64_t b, int64_t e) {
    int64_t gt = 0, eq = 0;
    for (int64_t i = b; i < e; ++i) {
      gt += keys[i] > t.key;
      eq += keys[i] == t.key;
    }
    n_gt[c] = gt;
    n_eq[c] = eq;
  });
  std::vector<int64_t> offset(chunks), eq_quota(chunks);
  int64_t written = 0, eq_left = t.need;
  for (int64_t c = 0; c < chunks; ++c) {
    eq_quota[c] = std::min(eq_left, n_eq[c]);
    eq_left -= eq_quota[c];
    offset[c] = written;
    written += n_gt[c] + eq_quota[c];
  }
  for_chunks(n, [&](int64_t c, int64_t b, int64_t e) {
    int64_t pos = offset[c], eq_take = eq_quota[c];
    for (int64_t i = b; i < e; ++i) {
      const bool take = keys[i] > t.key || (keys[i] == t.key && eq_take-- > 0);
      if (take) out[pos++] = ids ? ids[i] : i;
    }
  });
  return written;
}

// Stable LSD radix sort of idx by descending keys[idx] (ties keep their order,
// which is ascending index).
template <typename K>
void sort_by_key_descending(const K* keys, int64_t* idx, int64_t n) {
  std::vector<int64_t> tmp(n);
  std::vector<K> cur(n), next(n);
  for (int64_t i = 0; i < n; ++i) cur[i] = ~keys[idx[i]];  // ascending ~key = descending key
  int64_t* src = idx;
  int64_t* dst = tmp.data();
  for (int shift = 0; shift < int(sizeof(K)) * 8; shift += kRadixBits) {
    std::array<int64_t, kRadixBuckets + 1> start{};
    for (int64_t i = 0; i < n; ++i) ++start[((cur[i] >> shift) & (kRadixBuckets - 1)) + 1];
    bool one_bucket = false;
    for (int j = 0; j < kRadixBuckets; ++j) one_bucket |= start[j + 1] == n;
    if (one_bucket) continue;  // this digit is the same everywhere
    for (int j = 0; j < kRadixBuckets; ++j) start[j + 1] += start[j];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = start[(cur[i] >> shift) & (kRadixBuckets - 1)]++;
      dst[p] = src[i];
      next[p] = cur[i];
    }
    std::swap(src, dst);
    cur.swap(next);
  }
  if (src != idx) std::copy(src, src + n, idx);
}

template <typename F>
at::Tensor select_typed(const at::Tensor& scores_in, int64_t k, const at::Tensor& labels_in,
                        bool balanced, const at::Tensor& exclude_in, bool sorted) {
  using K = decltype(float_key(F{}));
  const at::Tensor scores = scores_in.contiguous();
  const int64_t N = scores.size(0);
  const F* s = scores.const_data_ptr<F>();
  at::Tensor exclude = exclude_in.defined() ? exclude_in.contiguous() : exclude_in;
  const bool* ex = exclude.defined() ? exclude.const_data_ptr<bool>() : nullptr;
  // Key 0 marks an excluded sample: no real score maps to it.
  std::vector<K> keys(N);
  for_chunks(N, [&](int64_t, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) keys[i] = (ex && ex[i]) ? K(0) : float_key(s[i]);
  });
  at::Tensor out = at::empty({k}, scores.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  if (k == 0) return out;
  if (!balanced) {
    compact(keys.data(), static_cast<const int64_t*>(nullptr), N,
            radix_threshold(keys.data(), N, k), o);
  } else {
    const at::Tensor labels = labels_in.contiguous();
    const int64_t* y = labels.const_data_ptr<int64_t>();
    const int64_t n_classes = N == 0 ? 0 : labels.max().item<int64_t>() + 1;
    // Eligible samples grouped by class, ascending index inside each class.
    std::vector<int64_t> counts(n_classes, 0), start(n_classes + 1, 0);
    for (int64_t i = 0; i < N; ++i) counts[y[i]] += keys[i] != 0;
    for (int64_t c = 0; c < n_classes; ++c) start[c + 1] = start[c] + counts[c];
    std::vector<int64_t> members(start[n_classes]);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < N; ++i)
      if (keys[i] != 0) members[fill[y[i]]++] = i;
    const std::vector<int64_t> quotas = largest_remainder_quotas(counts, k);
    std::vector<int64_t> out_start(n_classes + 1, 0);
    for (int64_t c = 0; c < n_classes; ++c) out_start[c + 1] = out_start[c] + quotas[c];
    std::vector<int64_t> picked(k);
    at::parallel_for(0, n_classes, 1, [&](int64_t cb, int64_t ce) {
      std::vector<K> class_keys;
      for (int64_t c = cb; c < ce; ++c) {
        if (quotas[c] == 0) continue;
        const int64_t* ids = members.data() + start[c];
        class_keys.resize(counts[c]);
        for (int64_t i = 0; i < counts[c]; ++i) class_keys[i] = keys[ids[i]];
        compact(class_keys.data(), ids, counts[c],
                radix_threshold(class_keys.data(), counts[c], quotas[c]),
                picked.data() + out_start[c]);
      }
    });
    // Back to ascending index order across classes.
    std::vector<uint8_t> taken(N, 0);
    for (const int64_t i : picked) taken[i] = 1;
    int64_t pos = 0;
    for (int64_t i = 0; i < N; ++i)
      if (taken[i]) o[pos++] = i;
  }
  if (sorted) sort_by_key_descending(keys.data(), o, k);
  return out;
}

at::Tensor select_topk_cpu(const at::Tensor& scores, int64_t k,
                           const c10::optional<at::Tensor>& labels, bool balanced,
                           const c10::optional<at::Tensor>& exclude, bool sorted) {
  check_select_args(scores, k, labels, balanced, exclude);
  const at::Tensor y = labels.value_or(at::Tensor());
  const at::Tensor ex = exclude.value_or(at::Tensor());
  return AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "select_topk", [&] {
    return select_typed<scalar_t>(scores, k, y, balanced, ex, sorted);
  });
}

// On the CPU nothing is gained by deferring: bad input raises now, and the
// returned errors say "none".
std::tuple<at::Tensor, at::Tensor> select_topk_deferred_cpu(const at::Tensor& scores, int64_t k,
                                                             const c10::optional<at::Tensor>& labels, bool balanced,
                                                             const c10::optional<at::Tensor>& exclude, bool sorted,
                                                             int64_t num_classes) {
  const SelectFacts facts = check_select_args(scores, k, labels, balanced, exclude);
  TORCH_CHECK(!balanced || facts.num_classes <= num_classes, "select_topk: label ", facts.num_classes - 1,
              " is not below num_classes=", num_classes);
  const int64_t none = std::numeric_limits<int64_t>::max();
  at::Tensor errors = at::empty({kNumSelectErrors}, scores.options().dtype(at::kLong));
  int64_t* e = errors.data_ptr<int64_t>();
  e[kFirstNan] = e[kFirstNegativeLabel] = e[kFirstLabelBeyond] = none;
  e[kEligible] = facts.eligible;
  const at::Tensor y = labels.value_or(at::Tensor());
  const at::Tensor ex = exclude.value_or(at::Tensor());
  at::Tensor out = AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "select_topk", [&] {
    return select_typed<scalar_t>(scores, k, y, balanced, ex, sorted);
  });
  return {out, errors};
}

template <typename F>
at::Tensor normalize_typed(const at::Tensor& scores_in) {
  const at::Tensor scores = scores_in.contiguous();
  const int64_t n = scores.numel();
  const F* s = scores.const_data_ptr<F>();
  // Fixed chunks summed in order: the same float64 total on any thread count.
  std::vector<double> partial(num_chunks(n), 0.0);
  for_chunks(n, [&](int64_t c, int64_t b, int64_t e) {
    double acc = 0.0;
    for (int64_t i = b; i < e; ++i) acc += static_cast<double>(s[i]);
    partial[c] = acc;
  });
  double total = 0.0;
  for (const double p : partial) total += p;
  check_normalize_total(scores, total);
  at::Tensor out = at::empty_like(scores);
  F* o = out.data_ptr<F>();
  for_chunks(n, [&](int64_t, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) o[i] = static_cast<F>(static_cast<double>(s[i]) / total);
  });
  return out;
}

at::Tensor normalize_cpu(const at::Tensor& scores) {
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
              "normalize: scores must be float32 or float64, got ", scores.scalar_type());
  return AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "normalize",
                                    [&] { return normalize_typed<scalar_t>(scores); });
}

}  // namespace

TORCH_LIBRARY_IMPL(unseen_fast, CPU, m) {
  m.impl("select_topk", &select_topk_cpu);
  m.impl("select_topk_deferred", &select_topk_deferred_cpu);
  m.impl("normalize", &normalize_cpu);
}

}  // namespace unseen_fast
