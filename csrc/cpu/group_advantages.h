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
// at::parallel_for (so torch's thread settings apply), the unit tests a serial loop.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/dtypes.h"
#include "../common/group_advantages_params.h"
#include "../common/reward_math.h"

namespace medix {
namespace cpu {

template <typename T>
inline float row_total(const GroupAdvParams& p, int64_t i) {
  const T* v = static_cast<const T*>(p.values) + i * p.stride_n;
  if (p.k == 1 && !p.weights) {  // plain rewards: the common case, one load
    float x = to_float(v[0]);
    return (p.nan_to_zero && !is_finite(x)) ? 0.f : x;
  }
  float acc = 0.f;
  for (int64_t j = 0; j < p.k; ++j) {
    float x = to_float(v[j * p.stride_k]);
    if (p.nan_to_zero && !is_finite(x)) x = 0.f;
    acc += (p.weights ? p.weights[j] : 1.f) * x;
  }
  return acc;
}

inline void group_bounds(const GroupAdvParams& p, int64_t g, int64_t* begin, int64_t* end) {
  if (p.offsets) { *begin = p.offsets[g]; *end = p.offsets[g + 1]; }
  else { *begin = g * p.group_size; *end = *begin + p.group_size; }
}

// Fixed groups of a compile-time size G (plain rewards): the member loops unroll into straight
// line code, and a block of groups is processed together so the per-group square root and
// division pipeline instead of serialising (per-group overhead, not bandwidth, bounds the
// general loop for small groups).
template <typename T, int G>
void fixed_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, float batch_std) {
  constexpr int kBlock = 16;
  const T* v = static_cast<const T*>(p.values);
  T* adv = static_cast<T*>(p.adv);
  for (int64_t g0 = gb; g0 < ge; g0 += kBlock) {
    const int nb = int(std::min<int64_t>(kBlock, ge - g0));
    float x[kBlock][G], mean[kBlock], ss[kBlock];
    bool deg[kBlock];
    for (int l = 0; l < nb; ++l) {
      const T* row = v + (g0 + l) * G * p.stride_n;
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
      const float std = G > 1 ? std::sqrt(ss[l] * (1.f / float(G > 1 ? G - 1 : 1))) : 0.f;
      if (p.group_mean) p.group_mean[g] = mean[l];
      if (p.group_std) p.group_std[g] = std;
      if (p.degenerate) p.degenerate[g] = deg[l];
      const GroupAffine a = group_affine(mean[l], std, G, deg[l], batch_std, p);
      T* out = adv + g * G;
#pragma GCC unroll 64
      for (int j = 0; j < G; ++j) out[j] = from_float<T>((x[l][j] - a.shift) * a.factor);
    }
  }
}

template <typename T>
bool try_fixed_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, float batch_std) {
  if (p.offsets || p.k != 1 || p.weights || p.total) return false;
  switch (p.group_size) {
    case 2: fixed_groups<T, 2>(p, gb, ge, batch_std); return true;
    case 4: fixed_groups<T, 4>(p, gb, ge, batch_std); return true;
    case 5: fixed_groups<T, 5>(p, gb, ge, batch_std); return true;
    case 8: fixed_groups<T, 8>(p, gb, ge, batch_std); return true;
    case 16: fixed_groups<T, 16>(p, gb, ge, batch_std); return true;
    case 32: fixed_groups<T, 32>(p, gb, ge, batch_std); return true;
    case 64: fixed_groups<T, 64>(p, gb, ge, batch_std); return true;
    default: return false;
  }
}

template <typename T, typename ParallelFor>
void group_advantages(const GroupAdvParams& p, ParallelFor pf) {
  float batch_std = 0.f;
  if (p.scale == int(AdvScale::kBatch) && p.n > 1) {
    // Two passes in double: a million fp32 rewards would lose digits in one fp32 sum.
    double s = 0.0;
    for (int64_t i = 0; i < p.n; ++i) s += row_total<T>(p, i);
    double m = s / double(p.n), ss = 0.0;
    for (int64_t i = 0; i < p.n; ++i) { double d = row_total<T>(p, i) - m; ss += d * d; }
    batch_std = float(std::sqrt(ss / double(p.n - 1)));
  }

  T* adv = static_cast<T*>(p.adv);
  int64_t avg = p.num_groups ? std::max<int64_t>(1, p.n / p.num_groups) : 1;
  pf(0, p.num_groups, std::max<int64_t>(1, 4096 / avg), [&](int64_t gb, int64_t ge) {
    if (try_fixed_groups<T>(p, gb, ge, batch_std)) return;
    // A group's totals are staged on the stack (when it fits) for the second and third pass.
    constexpr int64_t kStage = 256;
    float stage[kStage];
    for (int64_t g = gb; g < ge; ++g) {
      int64_t b, e; group_bounds(p, g, &b, &e);
      const int64_t count = e - b;
      const bool staged = count <= kStage;
      float sum = 0.f, lo = INFINITY, hi = -INFINITY;
      for (int64_t i = b; i < e; ++i) {
        float r = row_total<T>(p, i);
        if (staged) stage[i - b] = r;
        sum += r; lo = std::min(lo, r); hi = std::max(hi, r);
      }
      float mean = count ? sum / float(count) : 0.f;
      float ss = 0.f;
      if (staged) {
        for (int64_t i = 0; i < count; ++i) { float d = stage[i] - mean; ss += d * d; }
      } else {
        for (int64_t i = b; i < e; ++i) { float d = row_total<T>(p, i) - mean; ss += d * d; }
      }
      float std = count > 1 ? std::sqrt(ss / float(count - 1)) : 0.f;
      // NaN totals make lo/hi comparisons false: such a group is not degenerate, its mean is
      // NaN, and the Python wrapper reports it (nan_policy="raise").
      bool degenerate = count > 0 && lo == hi;
      if (p.group_mean) p.group_mean[g] = mean;
      if (p.group_std) p.group_std[g] = std;
      if (p.degenerate) p.degenerate[g] = degenerate;
      const GroupAffine a = group_affine(mean, std, count, degenerate, batch_std, p);
      if (staged) {
        if (p.total) for (int64_t i = b; i < e; ++i) p.total[i] = stage[i - b];
        for (int64_t i = b; i < e; ++i) adv[i] = from_float<T>((stage[i - b] - a.shift) * a.factor);
      } else {
        for (int64_t i = b; i < e; ++i) {
          float r = row_total<T>(p, i);
          if (p.total) p.total[i] = r;
          adv[i] = from_float<T>((r - a.shift) * a.factor);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace medix
