// Per-element formulas shared verbatim by the CPU and CUDA kernels (host and device).
#pragma once
#include <math.h>

#include "cosine_params.h"
#include "dtypes.h"
#include "group_advantages_params.h"

namespace medix {

// Every advantage rule is affine within a group: A_i = (r_i - shift) * factor. This returns
// (shift, factor) for one group from its statistics, so the per-sample loop is a plain
// multiply-add the compiler vectorises.
//   grpo:    shift = mean, factor = 1 / (std + eps)      (batch std with scale == batch; 1 if none)
//   dr_grpo: shift = mean, factor = 1
//   rloo:    shift = mean, factor = G / (G - 1)         (r_i - mean of the others)
// A group of one, or whose rewards are all equal, gets factor 0 (exactly 0: r - mean of equal
// fp32 values need not round to 0); verl's convention for a group of one (mean 0, std 1) is
// Singleton::kVerl.
//
// F is float (the fast path) or double: a group whose fp32 sum or sum of squared deviations
// overflows (rewards near 3e38, or spreads above ~1e19) is redone in double, as the float64
// reference computes it. The batch std arrives in double (it is accumulated in double, and its
// fp32 rounding could overflow); its factor is formed in double and then rounded to F.
template <typename F> struct GroupAffineT { F shift, factor; };
using GroupAffine = GroupAffineT<float>;

template <typename F>
MEDIX_HD GroupAffineT<F> group_affine(F mean, F std, int64_t count, bool degenerate, double batch_std,
                                      const GroupAdvParams& p) {
  const F one = F(1), zero = F(0), eps = F(p.eps);
  if (count == 1) {
    if (p.singleton == int(Singleton::kVerl) && p.mode != int(AdvMode::kRloo)) {
      if (p.mode == int(AdvMode::kGrpo) && p.scale == int(AdvScale::kGroup)) return {zero, one / (one + eps)};
      if (p.mode == int(AdvMode::kGrpo) && p.scale == int(AdvScale::kBatch))
        return {zero, F(1.0 / (batch_std + double(p.eps)))};
      return {zero, one};
    }
    return {zero, zero};
  }
  if (degenerate || count == 0) return {mean, zero};
  if (p.mode == int(AdvMode::kRloo)) return {mean, F(count) / F(count - 1)};
  if (p.mode == int(AdvMode::kDrGrpo) || p.scale == int(AdvScale::kNone)) return {mean, one};
  if (p.scale == int(AdvScale::kBatch)) return {mean, F(1.0 / (batch_std + double(p.eps)))};
  return {mean, one / (std + eps)};
}

// torch.nn.functional.cosine_similarity: each norm is clamped to eps separately, so a zero
// vector gives 0, not NaN. With scale_x / scale_y != 1 the sums are of x / scale_x and
// y / scale_y (the rows' largest magnitudes: the overflow-safe redo of huge rows), and the eps
// clamps are scaled alike, so the value is the cosine of the unscaled rows.
MEDIX_HD float cosine_from_sums(float dot, float xx, float yy, const CosineParams& p, float scale_x = 1.f,
                                float scale_y = 1.f) {
  float c = dot / (fmaxf(sqrtf(xx), p.eps / scale_x) * fmaxf(sqrtf(yy), p.eps / scale_y));
  if (p.has_threshold) return c >= p.threshold ? 1.f : 0.f;
  return c;
}

// Whether a row's fp32 sums overflowed (then the row is redone scaled by its largest magnitude).
MEDIX_HD bool cosine_sums_overflow(float dot, float xx, float yy) {
  return !is_finite(dot) || !is_finite(xx) || !is_finite(yy);
}

// The scale of a row in that redo: its largest magnitude, or 1 for a zero row (nothing to scale)
// and for a non-finite one (inf / NaN entries keep the unscaled semantics).
MEDIX_HD float cosine_row_scale(float max_abs) {
  return (max_abs > 0.f && is_finite(max_abs)) ? max_abs : 1.f;
}

}  // namespace medix
