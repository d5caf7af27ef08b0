// Group-relative advantages on the CPU, torch-free (unit-tested by ctest, wrapped by torch glue).
//
//   total_i = sum_k w_k * values[i, k]                       (one reward per sample)
//   grpo:    A_i = (r_i - mean_g) / (std_g + eps)            (std unbiased; scale: group/batch/none)
//   dr_grpo: A_i = r_i - mean_g
//   rloo:    A_i = r_i - mean of the other members = G/(G-1) * (r_i - mean_g)
// A group whose rewards are all equal, or that has one member, gets 0 (verl's convention for
// a group of one, mean 0 and std 1, is available as Singleton::kVerl).
//
// `ParallelFor` is any callable `pf(begin, end, grain, fn(begin, end))`: the torch glue passes
// at::parallel_for (so torch's thread settings apply), the unit tests a serial loop. Calls with
// less than kGroupAdvSerialWork elements never enter it (see below).
//
// Kernels, picked per call:
//  - AVX-512, fp32 rewards in fixed groups (group_advantages_avx512.h): 16 groups per step, their
//    statistics computed 16 lanes at a time (a shuffle tree over the tile for group sizes 2, 4,
//    8 and multiples of 16, gathers for the other sizes up to 15); composite rewards (K = 4) get
//    their totals 16 rows at a time, block by block, and then go through the same group kernel.
//  - scalar loops (any dtype, ragged groups, other sizes), compiled for AVX-512, AVX2 and
//    baseline x86-64 (isa.h) so the compiler vectorises what it can for the machine.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../common/dtypes.h"
#include "../common/group_advantages_params.h"
#include "../common/reward_math.h"
#include "isa.h"

namespace medix {
namespace cpu {

// Elements (n * k) below which a call runs on the calling thread. Waking the OpenMP team costs
// ~10-50 us on an idle machine and whole scheduler time slices (milliseconds) when other
// processes hold the cores, while one core handles a quarter of a million fp32 rewards in
// well under 100 us.
constexpr int64_t kGroupAdvSerialWork = int64_t(1) << 18;

template <typename TI>
MEDIX_INLINE float row_total(const GroupAdvParams& p, int64_t i) {
  const TI* v = static_cast<const TI*>(p.values) + i * p.stride_n;
  if (p.k == 1 && !p.weights) {  // plain rewards: the common case, one load
    float x = to_float(v[0]);
    return (p.nan_to_zero && !is_finite(x)) ? 0.f : x;
  }
  // Weighted sums in double (each fp32 product is exact there), rounded to fp32 once: the same
  // total whatever the summation order of a kernel (so the same groups come out degenerate).
  double acc = 0.0;
  for (int64_t j = 0; j < p.k; ++j) {
    float x = to_float(v[j * p.stride_k]);
    if (p.nan_to_zero && !is_finite(x)) x = 0.f;
    acc += double(p.weights ? p.weights[j] : 1.f) * double(x);
  }
  return float(acc);
}

inline void group_bounds(const GroupAdvParams& p, int64_t g, int64_t* begin, int64_t* end) {
  if (p.offsets) { *begin = p.offsets[g]; *end = p.offsets[g + 1]; }
  else { *begin = g * p.group_size; *end = *begin + p.group_size; }
}

// One group [b, e) in double: the redo of a group whose fp32 sum or sum of squared deviations
// overflowed (finite rewards near 3e38, or spreads above ~1e19), computed like the float64
// reference (NaN / inf rewards give the same non-finite results as the fp32 path).
template <typename TI, typename TO>
__attribute__((noinline)) void group_in_double(const GroupAdvParams& p, int64_t g, int64_t b, int64_t e,
                                               bool degenerate, double batch_std) {
  const int64_t count = e - b;
  double sum = 0.0, ss = 0.0;
  for (int64_t i = b; i < e; ++i) sum += double(row_total<TI>(p, i));
  const double mean = count ? sum / double(count) : 0.0;
  for (int64_t i = b; i < e; ++i) { const double d = double(row_total<TI>(p, i)) - mean; ss += d * d; }
  const double std = count > 1 ? std::sqrt(ss / double(count - 1)) : 0.0;
  if (p.group_mean) p.group_mean[g] = float(mean);
  if (p.group_std) p.group_std[g] = float(std);
  if (p.degenerate) p.degenerate[g] = degenerate;
  const GroupAffineT<double> a = group_affine<double>(mean, std, count, degenerate, batch_std, p);
  TO* adv = static_cast<TO*>(p.adv);
  for (int64_t i = b; i < e; ++i) {
    const float r = row_total<TI>(p, i);
    if (p.total) p.total[i] = r;
    adv[i] = from_float<TO>(float((double(r) - a.shift) * a.factor));
  }
}

// Fixed groups of a compile-time size G (plain rewards of type TI, advantages of type TO): the
// member loops unroll into straight line code, and a block of groups is processed together so
// the per-group square root and division pipeline instead of serialising.
// (The kernels work on a local copy of the params: every store through a float pointer could
// otherwise alias one of its fields, and the compiler would reload them all in the inner loops.)
template <typename TI, typename TO, int G>
MEDIX_INLINE void fixed_groups(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  constexpr int kBlock = 16;
  const TI* v = static_cast<const TI*>(p.values);
  TO* adv = static_cast<TO*>(p.adv);
  for (int64_t g0 = gb; g0 < ge; g0 += kBlock) {
    const int nb = int(std::min<int64_t>(kBlock, ge - g0));
    float x[kBlock][G], mean[kBlock], ss[kBlock];
    bool deg[kBlock];
    for (int l = 0; l < nb; ++l) {
      const TI* row = v + (g0 + l) * G * p.stride_n;
      float sum = 0.f, lo = INFINITY, hi = -INFINITY;
#pragma GCC unroll 64
      for (int j = 0; j < G; ++j) {
        float r = to_float(row[j * p.stride_n]);
        if (p.nan_to_zero && !is_finite(r)) r = 0.f;
        x[l][j] = r; sum += r; lo = std::min(lo, r); hi = std::max(hi, r);
      }
      mean[l] = sum * (1.f / float(G));
      deg[l] = lo == hi;
      float acc = 0.f;
#pragma GCC unroll 64
      for (int j = 0; j < G; ++j) { float d = x[l][j] - mean[l]; acc += d * d; }
      ss[l] = acc;
    }
    for (int l = 0; l < nb; ++l) {
      const int64_t g = g0 + l;
      if (!is_finite(mean[l]) || !is_finite(ss[l])) {  // fp32 overflow (or NaN / inf rewards)
        group_in_double<TI, TO>(p, g, g * G, (g + 1) * G, deg[l], batch_std);
        continue;
      }
      const float std = G > 1 ? std::sqrt(ss[l] * (1.f / float(G > 1 ? G - 1 : 1))) : 0.f;
      if (p.group_mean) p.group_mean[g] = mean[l];
      if (p.group_std) p.group_std[g] = std;
      if (p.degenerate) p.degenerate[g] = deg[l];
      const GroupAffine a = group_affine<float>(mean[l], std, G, deg[l], batch_std, p);
      TO* out = adv + g * G;
#pragma GCC unroll 64
      for (int j = 0; j < G; ++j) out[j] = from_float<TO>((x[l][j] - a.shift) * a.factor);
    }
  }
}

template <typename TI, typename TO>
MEDIX_INLINE bool try_fixed_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  if (p.offsets || p.k != 1 || p.weights || p.total) return false;
  switch (p.group_size) {
    case 2: fixed_groups<TI, TO, 2>(p, gb, ge, batch_std); return true;
    case 4: fixed_groups<TI, TO, 4>(p, gb, ge, batch_std); return true;
    case 5: fixed_groups<TI, TO, 5>(p, gb, ge, batch_std); return true;
    case 8: fixed_groups<TI, TO, 8>(p, gb, ge, batch_std); return true;
    case 16: fixed_groups<TI, TO, 16>(p, gb, ge, batch_std); return true;
    case 32: fixed_groups<TI, TO, 32>(p, gb, ge, batch_std); return true;
    case 64: fixed_groups<TI, TO, 64>(p, gb, ge, batch_std); return true;
    default: return false;
  }
}

// Any groups (ragged or fixed), any k: rows of type TI, advantages of type TO.
template <typename TI, typename TO>
MEDIX_INLINE void general_groups(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  TO* adv = static_cast<TO*>(p.adv);
  // A group's totals are staged on the stack (when it fits) for the second and third pass.
  constexpr int64_t kStage = 256;
  float stage[kStage];
  for (int64_t g = gb; g < ge; ++g) {
    int64_t b, e; group_bounds(p, g, &b, &e);
    const int64_t count = e - b;
    const bool staged = count <= kStage;
    float sum = 0.f, lo = INFINITY, hi = -INFINITY;
    for (int64_t i = b; i < e; ++i) {
      float r = row_total<TI>(p, i);
      if (staged) stage[i - b] = r;
      sum += r; lo = std::min(lo, r); hi = std::max(hi, r);
    }
    float mean = count ? sum / float(count) : 0.f;
    float ss = 0.f;
    if (staged) {
      for (int64_t i = 0; i < count; ++i) { float d = stage[i] - mean; ss += d * d; }
    } else {
      for (int64_t i = b; i < e; ++i) { float d = row_total<TI>(p, i) - mean; ss += d * d; }
    }
    float std = count > 1 ? std::sqrt(ss / float(count - 1)) : 0.f;
    // NaN totals make lo/hi comparisons false: such a group is not degenerate, its mean is
    // NaN, and the Python wrapper reports it (nan_policy="raise").
    bool degenerate = count > 0 && lo == hi;
    if (!is_finite(sum) || !is_finite(ss)) {  // fp32 overflow (or NaN / inf rewards)
      group_in_double<TI, TO>(p, g, b, e, degenerate, batch_std);
      continue;
    }
    if (p.group_mean) p.group_mean[g] = mean;
    if (p.group_std) p.group_std[g] = std;
    if (p.degenerate) p.degenerate[g] = degenerate;
    const GroupAffine a = group_affine<float>(mean, std, count, degenerate, batch_std, p);
    if (staged) {
      if (p.total) for (int64_t i = b; i < e; ++i) p.total[i] = stage[i - b];
      for (int64_t i = b; i < e; ++i) adv[i] = from_float<TO>((stage[i - b] - a.shift) * a.factor);
    } else {
      for (int64_t i = b; i < e; ++i) {
        float r = row_total<TI>(p, i);
        if (p.total) p.total[i] = r;
        adv[i] = from_float<TO>((r - a.shift) * a.factor);
      }
    }
  }
}

template <typename TI, typename TO>
MEDIX_INLINE void scalar_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  if (!try_fixed_groups<TI, TO>(p, gb, ge, batch_std)) general_groups<TI, TO>(p, gb, ge, batch_std);
}

}  // namespace cpu
}  // namespace medix

#include "group_advantages_avx512.h"

namespace medix {
namespace cpu {

template <typename T>
using GroupRangeFn = void (*)(const GroupAdvParams&, int64_t, int64_t, double);

template <typename T>
void group_range_base(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  scalar_groups<T, T>(p, gb, ge, batch_std);
}

#if MEDIX_HAS_ISA_VARIANTS
template <typename T>
MEDIX_TARGET_AVX2 void group_range_avx2(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  scalar_groups<T, T>(p, gb, ge, batch_std);
}

template <typename T>
MEDIX_TARGET_AVX512 void group_range_avx512(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  if (avx512::group_range<T>(p, gb, ge, batch_std)) return;
  scalar_groups<T, T>(p, gb, ge, batch_std);
}
#endif

template <typename T>
GroupRangeFn<T> pick_group_range() {
#if MEDIX_HAS_ISA_VARIANTS
  const int level = cpu_level();
  if (level == 2 && avx512::tile_orders_ok()) return group_range_avx512<T>;
  if (level >= 1) return group_range_avx2<T>;
#endif
  return group_range_base<T>;
}

template <typename T, typename ParallelFor>
void group_advantages(const GroupAdvParams& p, ParallelFor pf) {
  double batch_std = 0.0;
  if (p.scale == int(AdvScale::kBatch) && p.n > 1) {
    // Two passes in double: a million fp32 rewards would lose digits in one fp32 sum.
    double s = 0.0;
    for (int64_t i = 0; i < p.n; ++i) s += row_total<T>(p, i);
    double m = s / double(p.n), ss = 0.0;
    for (int64_t i = 0; i < p.n; ++i) { double d = row_total<T>(p, i) - m; ss += d * d; }
    batch_std = std::sqrt(ss / double(p.n - 1));
  }
  if (p.num_groups <= 0) return;
  const GroupRangeFn<T> fn = pick_group_range<T>();
  const int64_t work = p.n * std::max<int64_t>(1, p.k);
  if (work < kGroupAdvSerialWork || p.num_groups < 2) {
    fn(p, 0, p.num_groups, batch_std);  // no thread team for small calls
    return;
  }
  // Each thread gets at least half the serial threshold of work.
  const int64_t per_group = std::max<int64_t>(1, work / p.num_groups);
  const int64_t grain = std::max<int64_t>(1, (kGroupAdvSerialWork / 2) / per_group);
  pf(0, p.num_groups, grain, [&](int64_t gb, int64_t ge) { fn(p, gb, ge, batch_std); });
}

}  // namespace cpu
}  // namespace medix
