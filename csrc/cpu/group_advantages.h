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
// Kernels, picked once per process by the widest ISA the CPU has (isa.h; MEDIX_CPU_LEVEL caps it):
//  - AVX-512 (group_advantages_avx512.h) and AVX2 + FMA (group_advantages_avx2*.h): fp32 rewards
//    in fixed groups a tile of 16 (8) groups at a time, one lane per group (a shuffle tree for
//    group sizes 2, 4, 8 and multiples of the width, gathers for other sizes up to 15); ragged
//    groups one masked vector loop per group; composite rewards (K = 4) get their totals by an
//    in-register transpose, block by block, and then go through the same group kernel.
//  - portable loops (any dtype, any level, the rest of the cases): fixed groups of 2..64 as a
//    transposed tile of 16 groups (member j of the 16 groups contiguous), so each statistic is a
//    loop over 16 independent lanes that the compiler vectorises for the target; other groups one
//    at a time with their totals staged on the stack. Compiled once per ISA level as well.
// Every kernel redoes a group whose fp32 statistics are not finite with the one-group loop
// (which redoes fp32 overflow in double), so NaN / inf rewards have one semantics everywhere.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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

// The affine rule of a call for groups of >= 2 members that are not degenerate: factor =
// 1 / (std + eps) per group (by_std), or one constant for the call (rloo with fixed groups of
// size `count`, dr_grpo, scale none / batch). Degenerate groups get factor 0 on top of it.
struct TileAffine { bool by_std; float constant, eps; };

MEDIX_INLINE TileAffine tile_affine(const GroupAdvParams& p, int64_t count, double batch_std) {
  if (p.mode == int(AdvMode::kRloo)) return {false, float(count) / float(count - 1), p.eps};
  if (p.mode == int(AdvMode::kDrGrpo) || p.scale == int(AdvScale::kNone)) return {false, 1.f, p.eps};
  if (p.scale == int(AdvScale::kBatch)) return {false, float(1.0 / (batch_std + double(p.eps))), p.eps};
  return {true, 1.f, p.eps};
}

// The totals of a group's rows [b, b + count) into stage (plain rewards: one load per row, the
// NaN policy hoisted out of the loop).
template <typename TI>
MEDIX_INLINE void stage_totals(const GroupAdvParams& p, int64_t b, int64_t count, float* stage) {
  if (p.k != 1 || p.weights) {
    for (int64_t i = 0; i < count; ++i) stage[i] = row_total<TI>(p, b + i);
    return;
  }
  const TI* v = static_cast<const TI*>(p.values) + b * p.stride_n;
  const int64_t s = p.stride_n;
  if (p.nan_to_zero) {
    for (int64_t i = 0; i < count; ++i) { const float r = to_float(v[i * s]); stage[i] = is_finite(r) ? r : 0.f; }
  } else {
    for (int64_t i = 0; i < count; ++i) stage[i] = to_float(v[i * s]);
  }
}

// Any groups (ragged or fixed, any k), one at a time: rows of type TI, advantages of type TO.
// A group of up to kStage rows is staged on the stack and every statistic is a vectorisable loop
// over it; a larger one is streamed (row_total three times).
template <typename TI, typename TO>
MEDIX_INLINE void general_groups(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  TO* adv = static_cast<TO*>(p.adv);
  constexpr int64_t kStage = 256;
  alignas(64) float stage[kStage];
  for (int64_t g = gb; g < ge; ++g) {
    int64_t b, e; group_bounds(p, g, &b, &e);
    const int64_t count = e - b;
    const bool staged = count <= kStage;
    float sum = 0.f, lo = INFINITY, hi = -INFINITY;
    if (staged) {
      stage_totals<TI>(p, b, count, stage);
      // lo / hi skip NaN (a comparison with NaN is false), in every lane order alike.
#pragma omp simd reduction(+ : sum) reduction(min : lo) reduction(max : hi)
      for (int64_t i = 0; i < count; ++i) {
        const float r = stage[i];
        sum += r; lo = r < lo ? r : lo; hi = r > hi ? r : hi;
      }
    } else {
      for (int64_t i = b; i < e; ++i) {
        const float r = row_total<TI>(p, i);
        sum += r; lo = r < lo ? r : lo; hi = r > hi ? r : hi;
      }
    }
    const float mean = count ? sum / float(count) : 0.f;
    float ss = 0.f;
    if (staged) {
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < count; ++i) { const float d = stage[i] - mean; ss += d * d; }
    } else {
      for (int64_t i = b; i < e; ++i) { const float d = row_total<TI>(p, i) - mean; ss += d * d; }
    }
    const float std = count > 1 ? std::sqrt(ss / float(count - 1)) : 0.f;
    // NaN totals make the group's mean NaN; lo/hi skip them, and the double redo keeps that flag.
    const bool degenerate = count > 0 && lo == hi;
    if (!is_finite(sum) || !is_finite(ss)) {  // fp32 overflow (or NaN / inf rewards)
      group_in_double<TI, TO>(p, g, b, e, degenerate, batch_std);
      continue;
    }
    if (p.group_mean) p.group_mean[g] = mean;
    if (p.group_std) p.group_std[g] = std;
    if (p.degenerate) p.degenerate[g] = degenerate;
    const GroupAffine a = group_affine<float>(mean, std, count, degenerate, batch_std, p);
    if (staged) {
      if (p.total) for (int64_t i = 0; i < count; ++i) p.total[b + i] = stage[i];
      for (int64_t i = 0; i < count; ++i) adv[b + i] = from_float<TO>((stage[i] - a.shift) * a.factor);
    } else {
      for (int64_t i = b; i < e; ++i) {
        const float r = row_total<TI>(p, i);
        if (p.total) p.total[i] = r;
        adv[i] = from_float<TO>((r - a.shift) * a.factor);
      }
    }
  }
}

constexpr int kTileLanes = 16;      // groups per step of the portable tile kernel
constexpr int64_t kTileMaxG = 64;   // larger fixed groups go through general_groups

// Fixed groups of 2..kTileMaxG plain rewards, 16 groups per step, without intrinsics: the tile is
// transposed into x[j][l] (member j of group g0 + l), so the sums, minima, maxima and squared
// deviations are loops over 16 independent lanes (vectorised for the target, no add waiting on
// the previous one), as are the square roots and divisions of the 16 groups and the advantages;
// only the transposition in and out is element by element.
// kG: the group size when fixed at compile time (the small sizes, whose loops it unrolls), else 0.
template <typename TI, typename TO, bool kNanToZero, int kG>
MEDIX_INLINE void tile_groups(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  constexpr int L = kTileLanes;
  const GroupAdvParams p = p_in;
  const int64_t G = kG > 0 ? kG : p.group_size, s = p.stride_n;
  const TI* v = static_cast<const TI*>(p.values);
  TO* adv = static_cast<TO*>(p.adv);
  const TileAffine a = tile_affine(p, G, batch_std);
  const float inv_g = 1.f / float(G), inv_g1 = 1.f / float(G - 1);
  alignas(64) float x[kTileMaxG][L];
  alignas(64) float sum[L], lo[L], hi[L], ss[L], stdv[L], factor[L];
  for (int64_t g0 = gb; g0 < ge; g0 += L) {
    const int nb = int(std::min<int64_t>(L, ge - g0));
    for (int l = 0; l < L; ++l) {  // lanes past the last group repeat it (every lane stays finite)
      const TI* row = v + (g0 + std::min(l, nb - 1)) * G * s;
      for (int64_t j = 0; j < G; ++j) {
        const float r = to_float(row[j * s]);
        x[j][l] = (kNanToZero && !is_finite(r)) ? 0.f : r;
      }
    }
    for (int l = 0; l < L; ++l) { sum[l] = 0.f; lo[l] = INFINITY; hi[l] = -INFINITY; ss[l] = 0.f; }
    for (int64_t j = 0; j < G; ++j) {
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        const float r = x[j][l];
        sum[l] += r; lo[l] = r < lo[l] ? r : lo[l]; hi[l] = r > hi[l] ? r : hi[l];
      }
    }
#pragma omp simd
    for (int l = 0; l < L; ++l) sum[l] *= inv_g;  // the means from here on
    for (int64_t j = 0; j < G; ++j) {
#pragma omp simd
      for (int l = 0; l < L; ++l) { const float d = x[j][l] - sum[l]; ss[l] += d * d; }
    }
#pragma omp simd
    for (int l = 0; l < L; ++l) stdv[l] = ss[l] * inv_g1;
    sqrt_in_place(stdv, L);
#pragma omp simd
    for (int l = 0; l < L; ++l) {
      const float f = a.by_std ? 1.f / (stdv[l] + a.eps) : a.constant;
      factor[l] = lo[l] == hi[l] ? 0.f : f;
    }
    for (int64_t j = 0; j < G; ++j) {  // the advantages, in the tile
#pragma omp simd
      for (int l = 0; l < L; ++l) x[j][l] = (x[j][l] - sum[l]) * factor[l];
    }
    for (int l = 0; l < nb; ++l) {
      TO* out = adv + (g0 + l) * G;
      for (int64_t j = 0; j < G; ++j) out[j] = from_float<TO>(x[j][l]);
    }
    for (int l = 0; l < nb; ++l) {
      if (p.group_mean) p.group_mean[g0 + l] = sum[l];
      if (p.group_std) p.group_std[g0 + l] = stdv[l];
      if (p.degenerate) p.degenerate[g0 + l] = lo[l] == hi[l];
    }
    int bad = 0;  // NaN / inf rewards or fp32 overflow: such groups are redone by the one-group loop
#pragma omp simd reduction(+ : bad)
    for (int l = 0; l < L; ++l) bad += !is_finite(sum[l]) || !is_finite(ss[l]);
    for (int l = 0; bad && l < nb; ++l) {
      if (!is_finite(sum[l]) || !is_finite(ss[l])) general_groups<TI, TO>(p, g0 + l, g0 + l + 1, batch_std);
    }
  }
}

template <typename TI, typename TO>
MEDIX_INLINE void scalar_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  const bool tile = !p.offsets && p.k == 1 && !p.weights && !p.total && p.group_size >= 2 &&
                    p.group_size <= kTileMaxG;
  if (!tile) { general_groups<TI, TO>(p, gb, ge, batch_std); return; }
  if (p.nan_to_zero) { tile_groups<TI, TO, true, 0>(p, gb, ge, batch_std); return; }
  switch (p.group_size) {
    case 2: tile_groups<TI, TO, false, 2>(p, gb, ge, batch_std); return;
    case 4: tile_groups<TI, TO, false, 4>(p, gb, ge, batch_std); return;
    case 8: tile_groups<TI, TO, false, 8>(p, gb, ge, batch_std); return;
    default: tile_groups<TI, TO, false, 0>(p, gb, ge, batch_std); return;
  }
}

// The kernels of the portable level: totals row by row (MediX-R1's K = 4 contiguous components
// unrolled, in row_total's order), no fp32 fast path of its own.
struct PortableKernels {
  template <typename T>
  static MEDIX_INLINE void totals(const GroupAdvParams& p, int64_t i0, int64_t i1) {
    if (p.k != 4 || p.stride_k != 1) {
      for (int64_t i = i0; i < i1; ++i) p.total[i] = row_total<T>(p, i);
      return;
    }
    const T* v = static_cast<const T*>(p.values);
    const double w0 = p.weights[0], w1 = p.weights[1], w2 = p.weights[2], w3 = p.weights[3];
    const bool z = p.nan_to_zero;
    for (int64_t i = i0; i < i1; ++i) {
      const T* r = v + i * p.stride_n;
      float x0 = to_float(r[0]), x1 = to_float(r[1]), x2 = to_float(r[2]), x3 = to_float(r[3]);
      if (z) { x0 = is_finite(x0) ? x0 : 0.f; x1 = is_finite(x1) ? x1 : 0.f; x2 = is_finite(x2) ? x2 : 0.f;
               x3 = is_finite(x3) ? x3 : 0.f; }
      p.total[i] = float(0.0 + w0 * double(x0) + w1 * double(x1) + w2 * double(x2) + w3 * double(x3));
    }
  }
  static MEDIX_INLINE bool float_groups(const GroupAdvParams&, int64_t, int64_t, double) { return false; }
};

// Composite rewards: per block of groups, the fp32 totals (written to p.total, an output), then
// the groups of the block from those totals (still in cache). K: the ISA's kernels.
template <typename T, class K>
MEDIX_INLINE void composite_range(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  constexpr int64_t kBlockRows = 4096;
  GroupAdvParams q = p;  // the second stage: plain fp32 rewards = the totals
  q.values = p.total; q.k = 1; q.stride_n = 1; q.stride_k = 1; q.weights = nullptr; q.total = nullptr;
  q.nan_to_zero = false;
  const int64_t avg = std::max<int64_t>(1, p.offsets ? p.n / std::max<int64_t>(1, p.num_groups) : p.group_size);
  const int64_t step = std::max<int64_t>(1, kBlockRows / avg);
  for (int64_t b0 = gb; b0 < ge; b0 += step) {
    const int64_t b1 = std::min(ge, b0 + step);
    int64_t i0, i1, unused;
    group_bounds(p, b0, &i0, &unused);
    group_bounds(p, b1 - 1, &unused, &i1);
    K::template totals<T>(p, i0, i1);
    if (std::is_same<T, float>::value && K::float_groups(q, b0, b1, batch_std)) continue;
    scalar_groups<float, T>(q, b0, b1, batch_std);
  }
}

// One range of groups with the kernels K of an ISA level (inlined into that level's function).
template <typename T, class K>
MEDIX_INLINE void group_range_with(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  if (p.weights && p.total) {
    composite_range<T, K>(p, gb, ge, batch_std);
    return;
  }
  if (std::is_same<T, float>::value && K::float_groups(p, gb, ge, batch_std)) return;
  scalar_groups<T, T>(p, gb, ge, batch_std);
}

}  // namespace cpu
}  // namespace medix

#include "group_advantages_avx2.h"
#include "group_advantages_avx512.h"

namespace medix {
namespace cpu {

template <typename T>
using GroupRangeFn = void (*)(const GroupAdvParams&, int64_t, int64_t, double);

template <typename T>
void group_range_base(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  group_range_with<T, PortableKernels>(p, gb, ge, batch_std);
}

#if MEDIX_HAS_ISA_VARIANTS
template <typename T>
MEDIX_TARGET_AVX2 void group_range_avx2(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  group_range_with<T, avx2::Kernels>(p, gb, ge, batch_std);
}

template <typename T>
MEDIX_TARGET_AVX512 void group_range_avx512(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  group_range_with<T, avx512::Kernels>(p, gb, ge, batch_std);
}
#endif

template <typename T>
GroupRangeFn<T> pick_group_range() {
#if MEDIX_HAS_ISA_VARIANTS
  const int level = cpu_level();
  if (level == 2 && avx512::tile_orders_ok()) return group_range_avx512<T>;
  if (level >= 1 && avx2::tile_orders_ok()) return group_range_avx2<T>;
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
