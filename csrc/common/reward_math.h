// Per-element formulas shared verbatim by the CPU and CUDA kernels (host and device).
#pragma once
#include <math.h>

#include "cosine_params.h"
#include "dtypes.h"
#include "group_advantages_params.h"

namespace medix {

// Advantage of one sample from its group's statistics. A group of one, or whose rewards are
// all equal, gets 0 (exactly: r - mean of equal fp32 values need not round to 0); verl's
// convention for a group of one (mean 0, std 1) is Singleton::kVerl.
MEDIX_HD float advantage_of(float r, float mean, float std, int64_t count, bool degenerate,
                            float batch_std, const GroupAdvParams& p) {
  if (count == 1) {
    if (p.singleton == int(Singleton::kVerl) && p.mode != int(AdvMode::kRloo)) {
      if (p.mode == int(AdvMode::kGrpo) && p.scale == int(AdvScale::kGroup)) return r / (1.f + p.eps);
      if (p.mode == int(AdvMode::kGrpo) && p.scale == int(AdvScale::kBatch)) return r / (batch_std + p.eps);
      return r;
    }
    return 0.f;
  }
  if (degenerate) return 0.f;
  float centred = r - mean;
  if (p.mode == int(AdvMode::kRloo)) return centred * float(count) / float(count - 1);
  if (p.mode == int(AdvMode::kDrGrpo) || p.scale == int(AdvScale::kNone)) return centred;
  if (p.scale == int(AdvScale::kBatch)) return centred / (batch_std + p.eps);
  return centred / (std + p.eps);
}

// torch.nn.functional.cosine_similarity: each norm is clamped to eps separately, so a zero
// vector gives 0, not NaN.
MEDIX_HD float cosine_from_sums(float dot, float xx, float yy, const CosineParams& p) {
  float c = dot / (fmaxf(sqrtf(xx), p.eps) * fmaxf(sqrtf(yy), p.eps));
  if (p.has_threshold) return c >= p.threshold ? 1.f : 0.f;
  return c;
}

}  // namespace medix
