// CUDA kernels of select_topk (launch.h: SelectLaunch), after the multi-block
// radix select of PyTorch's TensorTopK.cu: the prefix found so far and the
// count still wanted stay on the device between passes, so nothing waits for
// the host. Each sample's key is unique (order key of the score, then the
// NOT of its index: ties go to the lowest index, as on the CPU), so each
// group's threshold T is one key and the winners are exactly the keys >= T.
//
//   init -> hist(0) -> group counts -> quotas -> pick(0) -> hist(1) -> pick(1) ... -> count -> scan -> write
//
// hist: 11-bit digit histograms of the candidates under their group's prefix
// (block-private in shared memory for one group); pass 0 also records bad
// input. group counts / quotas: eligible counts from pass 0's histogram,
// largest-remainder quotas per class on the device. pick: a block per group
// finds the digit holding its need-th largest key. count / scan / write: the winners
// compacted in index order (ballots per warp, a block scan per 256 samples).
// Launchers only: checks are in select_ops.cpp.
#include "kernel_launch.cuh"
#include "launch.h"

#include <cstdint>

namespace unseen_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kDigitBits = 11;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kBinsPerThread = kBuckets / kThreads;
constexpr int kRounds = kSelectTile / kThreads;
constexpr unsigned kFull = 0xffffffffu;

// 128-bit key, compared as (hi, lo); only the top kKeyBits<F> bits are used.
struct Key {
  uint64_t hi, lo;
};

template <typename F>
constexpr int kKeyBits = sizeof(F) == 4 ? 64 : 96;

template <typename F>
constexpr int kPasses = (kKeyBits<F> + kDigitBits - 1) / kDigitBits;

__device__ inline Key make_key(float s, int64_t i) {
  return Key{(static_cast<uint64_t>(float_key(s)) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i)), 0};
}

__device__ inline Key make_key(double s, int64_t i) {
  return Key{float_key(s), static_cast<uint64_t>(~static_cast<uint32_t>(i)) << 32};
}

__device__ inline bool at_least(const Key& a, const Key& b) { return a.hi > b.hi || (a.hi == b.hi && a.lo >= b.lo); }

// Bits [from, from + width) of the key (bit 127 is the top of hi).
__device__ inline unsigned key_bits(const Key& k, int from, int width) {
  uint64_t v;
  if (from >= 64) v = k.hi >> (from - 64);
  else if (from == 0) v = k.lo;
  else v = (k.lo >> from) | (k.hi << (64 - from));
  return static_cast<unsigned>(v & ((uint64_t{1} << width) - 1));
}

// Whether bits [top, 128) of a and b agree.
__device__ inline bool same_above(const Key& a, const Key& b, int top) {
  if (top >= 128) return true;
  if (top >= 64) return (a.hi >> (top - 64)) == (b.hi >> (top - 64));
  if (a.hi != b.hi) return false;
  return top == 0 ? a.lo == b.lo : (a.lo >> top) == (b.lo >> top);
}

__device__ inline void set_bits(uint64_t& hi, uint64_t& lo, unsigned digit, int from) {
  if (from >= 64) {
    hi |= static_cast<uint64_t>(digit) << (from - 64);
  } else {
    lo |= static_cast<uint64_t>(digit) << from;
    if (from > 64 - kDigitBits) hi |= static_cast<uint64_t>(digit) >> (64 - from);
  }
}

// The bits pass `pass` decides: [from, top).
template <typename F>
struct Digit {
  int top, from, width;
  __device__ explicit Digit(int pass) : top(128 - kDigitBits * pass) {
    from = top - kDigitBits > 128 - kKeyBits<F> ? top - kDigitBits : 128 - kKeyBits<F>;
    width = top - from;
  }
};

// Whether sample i competes, with its key and group.
template <typename F>
__device__ inline bool candidate(const SelectLaunch& a, int64_t i, Key& key, int64_t& group) {
  const F s = static_cast<const F*>(a.scores)[i];
  if (s != s || (a.exclude != nullptr && a.exclude[i])) return false;
  group = 0;
  if (a.balanced) {
    const int64_t y = a.labels[i];
    if (y < 0 || y >= a.groups) return false;
    group = y;
  }
  key = make_key(s, i);
  return true;
}

template <typename F>
__device__ inline bool taken(const SelectLaunch& a, int64_t i) {
  Key key;
  int64_t g;
  if (i >= a.n || !candidate<F>(a, i, key, g)) return false;
  const SelectGroup& s = a.group[g];
  return s.quota > 0 && at_least(key, Key{s.prefix_hi, s.prefix_lo});
}

__device__ inline void record_min(int64_t* slot, int64_t i) {
  atomicMin(reinterpret_cast<long long*>(slot), static_cast<long long>(i));
}

// record_min of the warp's lowest flagged index (lanes hold increasing
// indices), one atomic per warp: all-NaN scores at N = 10M would otherwise
// queue 10M atomics on one address before the error is even reported.
// Every lane of the warp must call it.
__device__ inline void record_first_in_warp(int64_t* slot, bool flagged, int64_t i) {
  const unsigned flags = __ballot_sync(kFull, flagged);
  if (flags != 0 && static_cast<int>(threadIdx.x % 32) == __ffs(flags) - 1) record_min(slot, i);
}

// Exclusive prefix sum in thread order over the block; `total` gets the sum.
// Every thread of the block must call it.
template <typename T>
__device__ T block_exclusive_scan(T v, T& total) {
  __shared__ T warp_totals[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T inclusive = v;
  for (int offset = 1; offset < 32; offset *= 2) {
    const T up = __shfl_up_sync(kFull, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  T before = 0;
  total = 0;
  for (int w = 0; w < kThreads / 32; ++w) {
    before += w < warp ? warp_totals[w] : T{0};
    total += warp_totals[w];
  }
  __syncthreads();  // warp_totals is reused by the next call
  return before + inclusive - v;
}

__global__ void __launch_bounds__(kThreads) init_kernel(const SelectLaunch a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t b = first; b < a.groups * kBuckets; b += stride) a.hist[b] = 0;
  for (int64_t g = first; g < a.groups; g += stride) a.group[g] = SelectGroup{0, 0, 0, 0, 0};
  if (first < kNumSelectErrors) a.errors[first] = first == kEligible ? 0 : INT64_MAX;
}

template <typename F>
__global__ void __launch_bounds__(kThreads) hist_kernel(const SelectLaunch a, int pass) {
  __shared__ unsigned local[kBuckets];
  const bool one_group = !a.balanced;  // the same for the whole block
  const Digit<F> digit(pass);
  if (one_group) {
    for (int b = threadIdx.x; b < kBuckets; b += kThreads) local[b] = 0;
    __syncthreads();
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  // The loop's bound is the block's, so whole warps iterate together and
  // the ballots and matches below always have all 32 lanes.
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads; first < a.n; first += stride) {
    const int64_t i = first + threadIdx.x;
    const bool here = i < a.n;
    if (pass == 0) {  // bad input, as check_select_args reports it
      const F s = here ? static_cast<const F*>(a.scores)[i] : F(0);
      record_first_in_warp(a.errors + kFirstNan, s != s, i);
      if (a.labels != nullptr) record_first_in_warp(a.errors + kFirstNegativeLabel, here && a.labels[i] < 0, i);
      if (a.balanced) record_first_in_warp(a.errors + kFirstLabelBeyond, here && a.labels[i] >= a.groups, i);
    }
    Key key;
    int64_t g = 0;
    bool counted = here && candidate<F>(a, i, key, g);
    if (counted && pass > 0) {
      const SelectGroup& s = a.group[g];
      counted = s.quota != 0 && same_above(key, Key{s.prefix_hi, s.prefix_lo}, digit.top);
    }
    const unsigned d = counted ? key_bits(key, digit.from, digit.width) : 0u;
    if (one_group) {
      if (counted) atomicAdd(&local[d], 1u);
    } else {
      // The classes' histograms are in global memory, where atomics on one
      // address queue in L2 one at a time; a few classes, or tied scores
      // (0/1 `correct`, all-zero scores), put whole warps on one bucket
      // for several passes. One atomic per distinct bucket of the warp.
      const long long bucket = counted ? g * kBuckets + d : -1;
      const unsigned peers = __match_any_sync(kFull, bucket);
      if (counted && static_cast<int>(threadIdx.x % 32) == __ffs(peers) - 1)
        atomicAdd(&a.hist[bucket], static_cast<unsigned>(__popc(peers)));
    }
  }
  if (one_group) {
    __syncthreads();
    for (int b = threadIdx.x; b < kBuckets; b += kThreads)
      if (local[b] != 0) atomicAdd(&a.hist[b], local[b]);
  }
}

// A block per group: its eligible count, the sum of pass 0's histogram
// (coalesced; one thread summing a class's 2,048 bins alone made the quota
// block read 45M scattered words at ImageNet-21k's 21,841 classes).
__global__ void __launch_bounds__(kThreads) group_count_kernel(const SelectLaunch a) {
  const unsigned* h = a.hist + static_cast<int64_t>(blockIdx.x) * kBuckets;
  long long mine = 0;
  for (int b = threadIdx.x; b < kBuckets; b += kThreads) mine += h[b];
  long long count;
  block_exclusive_scan(mine, count);
  if (threadIdx.x == 0) a.group[blockIdx.x].count = count;
}

// One block: the total eligible count, then the quotas (largest remainder,
// ties to the lower class: select_math.h's rule).
__global__ void __launch_bounds__(kThreads) quota_kernel(const SelectLaunch a) {
  long long mine = 0;
  for (int64_t g = threadIdx.x; g < a.groups; g += kThreads) mine += a.group[g].count;
  long long n;
  block_exclusive_scan(mine, n);
  if (threadIdx.x == 0) a.errors[kEligible] = n;
  if (a.k > n || n == 0) return;  // k > n: reported by the host; every quota stays 0 (and k = 0 when n = 0)
  if (!a.balanced) {
    if (threadIdx.x == 0) a.group[0].quota = a.group[0].need = a.k;
    return;
  }
  long long base_sum = 0;
  for (int64_t g = threadIdx.x; g < a.groups; g += kThreads) base_sum += a.k * a.group[g].count / n;
  long long given;
  block_exclusive_scan(base_sum, given);
  const long long extra = a.k - given;  // seats left, < groups: one each to the largest remainders
  // The extra-th largest remainder T by bisection over [0, n): O(groups log n)
  // where ranking every class against every other was O(groups^2) (2M
  // comparisons per thread at ImageNet-21k's 21,841 classes).
  long long lo = 0, hi = extra > 0 ? n - 1 : 0;  // invariant: at least `extra` remainders >= lo
  while (lo < hi) {
    const long long mid = lo + (hi - lo + 1) / 2;
    long long mine_at_least = 0, at_least;
    for (int64_t g = threadIdx.x; g < a.groups; g += kThreads) mine_at_least += a.k * a.group[g].count % n >= mid;
    block_exclusive_scan(mine_at_least, at_least);
    if (at_least >= extra) lo = mid; else hi = mid - 1;
  }
  long long mine_above = 0, above;
  for (int64_t g = threadIdx.x; g < a.groups; g += kThreads) mine_above += a.k * a.group[g].count % n > lo;
  block_exclusive_scan(mine_above, above);
  // remainders above T take a seat; those equal to T take the rest in class order
  long long tied_before = 0;  // classes with remainder T in earlier rounds
  for (int64_t first = 0; first < a.groups; first += kThreads) {  // the same rounds for every thread
    const int64_t g = first + threadIdx.x;
    const long long rem = g < a.groups ? a.k * a.group[g].count % n : -1;
    long long tied_in_round;
    const long long tied_rank = tied_before + block_exclusive_scan<long long>(rem == lo, tied_in_round);
    tied_before += tied_in_round;
    if (g >= a.groups) continue;
    const bool seat = extra > 0 && (rem > lo || (rem == lo && tied_rank < extra - above));
    const long long quota = a.k * a.group[g].count / n + (seat ? 1 : 0);
    a.group[g].quota = quota;
    a.group[g].need = quota;
  }
}

// A block per group: thread t holds the 8 bins below the top 8t, a scan
// gives the count above each thread's bins, and the thread whose bins hold
// the need-th largest key extends the prefix. Clears the histogram.
template <typename F>
__global__ void __launch_bounds__(kThreads) pick_kernel(const SelectLaunch a, int pass) {
  const int64_t g = blockIdx.x;
  SelectGroup* s = a.group + g;
  unsigned* h = a.hist + g * kBuckets;
  const int top_bin = kBuckets - kBinsPerThread * static_cast<int>(threadIdx.x);  // bins [top_bin - 8, top_bin)
  unsigned bins[kBinsPerThread];
  long long sum = 0;
  for (int j = 0; j < kBinsPerThread; ++j) {
    bins[j] = h[top_bin - 1 - j];
    h[top_bin - 1 - j] = 0;
    sum += bins[j];
  }
  long long total;
  const long long above = block_exclusive_scan(sum, total);
  const long long quota = s->quota, need = s->need;
  __syncthreads();  // everyone has read need before it changes
  if (quota == 0) return;
  if (above < need && need <= above + sum) {
    long long left = need - above;
    int j = 0;
    while (left > bins[j]) left -= bins[j++];
    const Digit<F> digit(pass);
    set_bits(s->prefix_hi, s->prefix_lo, static_cast<unsigned>(top_bin - 1 - j), digit.from);
    s->need = left;
  }
  if (total < need && threadIdx.x == 0) s->quota = 0;  // inconsistent input: the errors say why
}

template <typename F>
__global__ void __launch_bounds__(kThreads) count_kernel(const SelectLaunch a) {
  unsigned count = 0;
  for (int r = 0; r < kRounds; ++r)
    count += taken<F>(a, static_cast<int64_t>(blockIdx.x) * kSelectTile + r * kThreads + threadIdx.x);
  unsigned total;
  block_exclusive_scan(count, total);
  if (threadIdx.x == 0) a.tile_counts[blockIdx.x] = total;
}

// One block: tile counts -> each tile's first output position.
__global__ void __launch_bounds__(kThreads) scan_kernel(const SelectLaunch a) {
  const int64_t tiles = select_tiles(a.n);
  unsigned carry = 0;
  for (int64_t base = 0; base < tiles; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    const unsigned v = t < tiles ? a.tile_counts[t] : 0u;
    unsigned total;
    const unsigned before = block_exclusive_scan(v, total);
    if (t < tiles) a.tile_counts[t] = carry + before;
    carry += total;
  }
}

template <typename F>
__global__ void __launch_bounds__(kThreads) write_kernel(const SelectLaunch a) {
  long long offset = a.tile_counts[blockIdx.x];
  for (int r = 0; r < kRounds; ++r) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kSelectTile + r * kThreads + threadIdx.x;
    const unsigned take = taken<F>(a, i) ? 1u : 0u;
    unsigned total;
    const unsigned before = block_exclusive_scan(take, total);
    if (take && offset + before < a.k) a.out[offset + before] = i;
    offset += total;
  }
}

template <typename F>
cudaError_t launch_typed(const SelectLaunch& a, cudaStream_t stream) {
  const int64_t tiles = select_tiles(a.n);
  const unsigned spread = static_cast<unsigned>(tiles < 1 ? 1 : tiles < 4096 ? tiles : 4096);
  const unsigned groups = static_cast<unsigned>(a.groups);
  cudaError_t status = launch_kernel(init_kernel, spread, kThreads, stream, a);
  if (a.n == 0 || status != cudaSuccess) return status;
  // pass 0's histogram also records bad input and the eligible count, even for k = 0
  status = launch_kernel(hist_kernel<F>, spread, kThreads, stream, a, 0);
  if (status == cudaSuccess) status = launch_kernel(group_count_kernel, groups, kThreads, stream, a);
  if (status == cudaSuccess) status = launch_kernel(quota_kernel, 1, kThreads, stream, a);
  if (a.k == 0) return status;
  for (int pass = 0; pass < kPasses<F> && status == cudaSuccess; ++pass) {
    if (pass > 0) status = launch_kernel(hist_kernel<F>, spread, kThreads, stream, a, pass);
    if (status == cudaSuccess) status = launch_kernel(pick_kernel<F>, groups, kThreads, stream, a, pass);
  }
  if (status == cudaSuccess) status = launch_kernel(count_kernel<F>, static_cast<unsigned>(tiles), kThreads, stream, a);
  if (status == cudaSuccess) status = launch_kernel(scan_kernel, 1, kThreads, stream, a);
  if (status == cudaSuccess) status = launch_kernel(write_kernel<F>, static_cast<unsigned>(tiles), kThreads, stream, a);
  return status;
}

}  // namespace

cudaError_t launch_select(const SelectLaunch& a, cudaStream_t stream) noexcept {
  if (a.n > INT32_MAX || a.groups < 1 || a.groups > INT32_MAX) return cudaErrorInvalidValue;
  return a.is_double ? launch_typed<double>(a, stream) : launch_typed<float>(a, stream);
}

}  // namespace unseen_fast::cuda
