// Row-wise cosine-similarity rewards on the CPU, torch-free. fp32 accumulation for every input
// type; the inner loop is a plain reduction the compiler vectorises (`omp simd`).
#pragma once
#include <algorithm>
#include <cmath>

#include "../common/cosine_params.h"
#include "../common/dtypes.h"
#include "../common/reward_math.h"

namespace medix {
namespace cpu {

template <typename T, typename ParallelFor>
void cosine_rewards(const CosineParams& p, ParallelFor pf) {
  pf(0, p.b, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.d)), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
      const T* y = static_cast<const T*>(p.y) + r * p.y_stride;
      float dot = 0.f, xx = 0.f, yy = 0.f;
#pragma omp simd reduction(+ : dot, xx, yy)
      for (int64_t j = 0; j < p.d; ++j) {
        float a = to_float(x[j]), c = to_float(y[j]);
        dot += a * c; xx += a * a; yy += c * c;
      }
      p.out[r] = cosine_from_sums(dot, xx, yy, p);
    }
  });
}

}  // namespace cpu
}  // namespace medix
