// Selection math shared by the CPU and CUDA selectors: order-preserving keys,
// the radix-select bucket step, and largest-remainder class quotas.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace unseen_fast {

// What a select_topk that must not wait for the device records about bad
// input instead of raising (int64 each; checks.h turns it into the error).
enum SelectError : int {
  kFirstNan,            // index of the first NaN score, INT64_MAX when none
  kFirstNegativeLabel,  // index of the first negative label, INT64_MAX when none
  kFirstLabelBeyond,    // index of the first label >= num_classes, INT64_MAX when none
  kEligible,            // samples that can be selected
  kNumSelectErrors,
};

// Radix select works on 8-bit digits, most significant first.
constexpr int kRadixBits = 8;
constexpr int kRadixBuckets = 1 << kRadixBits;

// Unsigned key whose order is the float order, -0.0 equal to +0.0. Key 0 is
// never produced for a non-NaN value (key(-inf) > 0), so the selectors use it
// to mean "not a candidate".
C10_HOST_DEVICE inline uint32_t float_key(float x) {
  if (x == 0.f) x = 0.f;
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

C10_HOST_DEVICE inline uint64_t float_key(double x) {
  if (x == 0.0) x = 0.0;
  uint64_t bits;
  memcpy(&bits, &x, sizeof(bits));
  const uint64_t sign = 0x8000000000000000ull;
  return (bits & sign) ? ~bits : (bits | sign);
}

// One radix-select step. `hist` counts the candidates per digit value; `need`
// (>= 1) of the largest are still wanted. Returns the digit that holds the
// need-th largest and lowers `need` by the count in the digits above it.
inline int pick_bucket(const int64_t* hist, int64_t& need) {
  for (int b = kRadixBuckets - 1; b >= 0; --b) {
    if (hist[b] >= need) return b;
    need -= hist[b];
  }
  return -1;  // fewer candidates than need: the caller checked this before
}

// Largest-remainder split of k over classes in proportion to `counts`:
// floor(k n_c / n) each, then one more to the classes with the largest
// remainders (ties: lower class first). The quotas sum to k and a class never
// gets more than it has (requires k <= sum(counts)).
inline std::vector<int64_t> largest_remainder_quotas(
    const std::vector<int64_t>& counts, int64_t k) {
  const int64_t n = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<int64_t> quotas(counts.size(), 0);
  if (n == 0 || k == 0) return quotas;
  std::vector<int64_t> remainders(counts.size());
  int64_t given = 0;
  for (size_t c = 0; c < counts.size(); ++c) {
    // k * n_c < 2^63 for any dataset that fits in memory (k, n_c < 2^31.5).
    quotas[c] = k * counts[c] / n;
    remainders[c] = k * counts[c] % n;
    given += quotas[c];
  }
  std::vector<size_t> order(counts.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return remainders[a] > remainders[b];
  });
  for (size_t i = 0; given < k; ++i, ++given) quotas[order[i]] += 1;
  return quotas;
}

}  // namespace unseen_fast
