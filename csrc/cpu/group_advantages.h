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
    // A group's totals are staged on the stack (when it fits) for the second and third pass.
    constexpr int64_t kStage = 256;
    float stage[kStage];
    for (int64_t g = gb; g < ge; ++g) {
      int64_t b, e; group_bounds(p, g, &b, &e);
      const int64_t count = e - b;
      const bool staged = count <= kStage;
      auto total_at = [&](int64_t i) { return staged ? stage[i - b] : row_total<T>(p, i); };
      float sum = 0.f, lo = INFINITY, hi = -INFINITY;
      for (int64_t i = b; i < e; ++i) {
        float r = row_total<T>(p, i);
        if (staged) stage[i - b] = r;
        sum += r; lo = std::min(lo, r); hi = std::max(hi, r);
      }
      float mean = count ? sum / float(count) : 0.f;
      float ss = 0.f;
      for (int64_t i = b; i < e; ++i) { float d = total_at(i) - mean; ss += d * d; }
      float std = count > 1 ? std::sqrt(ss / float(count - 1)) : 0.f;
      // NaN totals make lo/hi comparisons false: such a group is not degenerate, its mean is
      // NaN, and the Python wrapper reports it (nan_policy="raise").
      bool degenerate = count > 0 && lo == hi;
      if (p.group_mean) p.group_mean[g] = mean;
      if (p.group_std) p.group_std[g] = std;
      if (p.degenerate) p.degenerate[g] = degenerate;
      for (int64_t i = b; i < e; ++i) {
        float r = total_at(i);
        if (p.total) p.total[i] = r;
        adv[i] = from_float<T>(advantage_of(r, mean, std, count, degenerate, batch_std, p));
      }
    }
  });
}

}  // namespace cpu
}  // namespace medix
