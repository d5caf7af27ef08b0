// Parameters of the row-wise cosine-similarity reward kernels, torch-free.
//   cos_i = <x_i, y_i> / (max(|x_i|, eps) * max(|y_i|, eps))      (torch.nn.functional semantics)
//   out_i = cos_i, or (cos_i >= threshold ? 1 : 0) when has_threshold.
#pragma once
#include <cstdint>

namespace medix {

struct CosineParams {
  const void* x = nullptr;  // [b, d]
  const void* y = nullptr;  // [b, d]
  int64_t b = 0, d = 0;
  int64_t x_stride = 0, y_stride = 0;  // row strides in elements (columns are contiguous)
  float eps = 1e-8f;
  bool has_threshold = false;
  float threshold = 0.f;
  float* out = nullptr;  // [b] fp32
};

}  // namespace medix
