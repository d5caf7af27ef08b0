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
struct GroupAffine { float shift, factor; };

MEDIX_HD GroupAffine group_affine(float mean, float std, int64_t count, bool degenerate, float batch_std,
                                  const GroupAdvParams& p) {
  if (count == 1) {
    if (p.singleton == int(Singleton::kVerl) && p.mode != int(AdvMode::kRloo)) {
      if (p.mode == int(AdvMode::kGrpo) && p.scale == int(AdvScale::kGroup)) return {0.f, 1.f / (1.f + p.eps)};
      if (p.mode == int(AdvMode::kGrpo) && p.scale == int(AdvScale::kBatch)) return {0.f, 1.f / (batch_std + p.eps)};
      return {0.f, 1.f};
    }
    return {0.f, 0.f};
  }
  if (degenerate || count == 0) return {mean, 0.f};
  if (p.mode == int(AdvMode::kRloo)) return {mean, float(count) / float(count - 1)};
  if (p.mode == int(AdvMode::kDrGrpo) || p.scale == int(AdvScale::kNone)) return {mean, 1.f};
  if (p.scale == int(AdvScale::kBatch)) return {mean, 1.f / (batch_std + p.eps)};
  return {mean, 1.f / (std + p.eps)};
}

// torch.nn.functional.cosine_similarity: each norm is clamped to eps separately, so a zero
// vector gives 0, not NaN.
MEDIX_HD float cosine_from_sums(float dot, float xx, float yy, const CosineParams& p) {
  float c = dot / (fmaxf(sqrtf(xx), p.eps) * fmaxf(sqrtf(yy), p.eps));
  if (p.has_threshold) return c >= p.threshold ? 1.f : 0.f;
  return c;
}

}  // namespace medix
