// Parameters of the fused per-token log-prob / entropy kernels (CPU and CUDA), torch-free.
//
// Rows of logits x [T, V] (unit column stride, row stride given), one sampled id per row:
//   z = x / temperature, lse = logsumexp(z), logp = z[id] - lse, H = lse - sum softmax(z) * z
// Backward (grad written in the logits dtype, possibly over the logits themselves):
//   d x = (1 / temperature) * (g_lp * (onehot(id) - p) - g_H * p * (z - lse + H)),  p = softmax(z)
#pragma once
#include <cstdint>

#include "dtypes.h"

namespace medix {

struct LogprobParams {
  // Inputs
  const void* logits = nullptr;   // [T, V], element type given by `dtype`
  DType dtype = DType::kFloat32;
  const int64_t* ids = nullptr;   // [T], each in [0, V) (checked by the glue)
  int64_t T = 0, V = 0;
  int64_t row_stride = 0;         // elements between consecutive rows of logits
  float temperature = 1.f;

  // Forward outputs (fp32, [T]); entropy may be null (not computed). The backward reads lse and
  // entropy (the forward's values) from the same fields and writes neither.
  float* logp = nullptr;
  float* lse = nullptr;
  float* entropy = nullptr;

  // Backward inputs (fp32, [T]); grad_entropy null means no entropy term (entropy not read).
  const float* grad_logp = nullptr;
  const float* grad_entropy = nullptr;
  // Backward output [T, V] in `dtype`; may alias logits (in place: each element is read before it
  // is written, by the same thread).
  void* grad_logits = nullptr;
  int64_t grad_row_stride = 0;
};

}  // namespace medix
