// Row-wise cosine-similarity rewards on the CPU, torch-free. fp32 accumulation for every input
// type; the inner loop is a plain reduction the compiler vectorises (`omp simd`), compiled for
// AVX-512, AVX2 and baseline x86-64 (isa.h). Small batches run on the calling thread.
#pragma once
#include <algorithm>
#include <cmath>

#include "../common/cosine_params.h"
#include "../common/dtypes.h"
#include "../common/reward_math.h"
#include "isa.h"

namespace medix {
namespace cpu {

// Elements (b * d) below which the call stays on the calling thread (thread wake-up costs more
// than the work).
constexpr int64_t kCosineSerialWork = int64_t(1) << 17;

// A row whose fp32 sums overflowed (entries near 1e19 and above): each vector divided by its
// largest magnitude first, so the sums stay finite and the cosine is the unscaled rows' (as the
// float64 reference). Rows with inf / NaN entries keep the plain semantics.
template <typename T>
__attribute__((noinline)) void cosine_row_scaled(const CosineParams& p, const T* x, const T* y, int64_t r) {
  float mx = 0.f, my = 0.f;
  for (int64_t j = 0; j < p.d; ++j) {
    mx = std::max(mx, std::fabs(to_float(x[j])));
    my = std::max(my, std::fabs(to_float(y[j])));
  }
  const float sx = cosine_row_scale(mx), sy = cosine_row_scale(my);
  float dot = 0.f, xx = 0.f, yy = 0.f;
  for (int64_t j = 0; j < p.d; ++j) {
    const float a = to_float(x[j]) / sx, c = to_float(y[j]) / sy;
    dot += a * c; xx += a * a; yy += c * c;
  }
  p.out[r] = cosine_from_sums(dot, xx, yy, p, sx, sy);
}

template <typename T>
MEDIX_INLINE void cosine_range(const CosineParams& p, int64_t rb, int64_t re) {
  for (int64_t r = rb; r < re; ++r) {
    const T* x = static_cast<const T*>(p.x) + r * p.x_stride;
    const T* y = static_cast<const T*>(p.y) + r * p.y_stride;
    float dot = 0.f, xx = 0.f, yy = 0.f;
#pragma omp simd reduction(+ : dot, xx, yy)
    for (int64_t j = 0; j < p.d; ++j) {
      float a = to_float(x[j]), c = to_float(y[j]);
      dot += a * c; xx += a * a; yy += c * c;
    }
    if (cosine_sums_overflow(dot, xx, yy)) {
      cosine_row_scaled<T>(p, x, y, r);
      continue;
    }
    p.out[r] = cosine_from_sums(dot, xx, yy, p);
  }
}

template <typename T>
using CosineRangeFn = void (*)(const CosineParams&, int64_t, int64_t);

template <typename T>
void cosine_range_base(const CosineParams& p, int64_t rb, int64_t re) { cosine_range<T>(p, rb, re); }
#if MEDIX_HAS_ISA_VARIANTS
template <typename T>
MEDIX_TARGET_AVX2 void cosine_range_avx2(const CosineParams& p, int64_t rb, int64_t re) { cosine_range<T>(p, rb, re); }
template <typename T>
MEDIX_TARGET_AVX512 void cosine_range_avx512(const CosineParams& p, int64_t rb, int64_t re) {
  cosine_range<T>(p, rb, re);
}
#endif

template <typename T, typename ParallelFor>
void cosine_rewards(const CosineParams& p, ParallelFor pf) {
  CosineRangeFn<T> fn = cosine_range_base<T>;
#if MEDIX_HAS_ISA_VARIANTS
  const int level = cpu_level();
  fn = level == 2 ? cosine_range_avx512<T> : level == 1 ? cosine_range_avx2<T> : cosine_range_base<T>;
#endif
  if (p.b <= 0) return;
  if (p.b * p.d < kCosineSerialWork) {
    fn(p, 0, p.b);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, (kCosineSerialWork / 2) / std::max<int64_t>(1, p.d));
  pf(0, p.b, grain, [&](int64_t rb, int64_t re) { fn(p, rb, re); });
}

}  // namespace cpu
}  // namespace medix
