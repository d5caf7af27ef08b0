// Fused per-token log-probs / entropy on the CPU, forward and backward, torch-free.
//
// One pass over each row's vocabulary: the row is walked in L1-sized blocks; each block's max
// updates a running max M, the running sums are rescaled once per block, and the block's
// exponentials are accumulated in a loop the compiler vectorises (exp is a polynomial below:
// std::exp does not vectorise). Sums kept relative to M avoid cancellation in the entropy:
//   S = sum exp(z - M),  D = sum exp(z - M) * (z - M)
//   lse = M + log S,  logp = z[id] - lse,  H = log S - D / S
// Backward (in place allowed: every element is read before it is written):
//   dx = (1/T) * (g_lp * (onehot(id) - p) - g_H * p * (z - lse + H)),  p = exp(z - lse)
//
// Three builds of the row kernels, picked at run time (isa.h; MEDIX_CPU_LEVEL caps it): AVX-512
// and AVX2 + FMA + F16C written with explicit vectors (logprob_vec.h), and the loops below for
// baseline x86-64, which the compiler vectorises. One build runs everywhere and uses the widest
// vectors the CPU has.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../common/dtypes.h"
#include "../common/logprob_params.h"
#include "isa.h"

namespace medix {
namespace cpu {

// e^y on |y| <= ln2 / 2 as 1 + y (C1 + y (C2 + y (C3 + y (C4 + y C5)))): coefficients fitted for
// the least maximum relative error (9.2e-8 in exact arithmetic; with fp32 rounding the whole exp
// stays below the bound in tests/tolerances.py, checked on every fp32 input by ctest).
constexpr float kExpC1 = 9.999997072e-01f, kExpC2 = 4.999914953e-01f, kExpC3 = 1.666763629e-01f,
                kExpC4 = 4.189792929e-02f, kExpC5 = 8.290306686e-03f;

// e^x for x <= 0 (the only range used here). Range reduction x = n ln2 + y, |y| <= ln2/2, with
// round-to-nearest by the 1.5 * 2^23 trick (vectorises on any x86-64), the polynomial above, and
// 2^n built in the exponent bits. The vector kernels (logprob_vec.h) compute the same formula.
MEDIX_INLINE float exp_nonpos(float x) {
  x = std::max(x, -87.0f);  // below: e^x < 1.7e-38, flushed to (almost) 0; also maps -inf
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float y = x - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln2 in two parts
  float p = kExpC5;
  p = p * y + kExpC4;
  p = p * y + kExpC3;
  p = p * y + kExpC2;
  p = p * y + kExpC1;
  p = p * y + 1.0f;
  const int32_t e = (int32_t(n) + 127) << 23;
  return p * __builtin_bit_cast(float, e);
}

constexpr int64_t kLogprobBlock = 1024;  // 4 KB of fp32 per block: stays in L1

template <typename T>
MEDIX_INLINE void logprob_row_fwd(const T* __restrict__ x, int64_t V, float inv_t, int64_t id, bool want_entropy,
                                  float* logp, float* lse, float* entropy) {
  float buf[kLogprobBlock];
  float M = -INFINITY, S = 0.f, D = 0.f;
  for (int64_t j0 = 0; j0 < V; j0 += kLogprobBlock) {
    const int64_t n = std::min(kLogprobBlock, V - j0);
    float bm = -INFINITY;
#pragma omp simd reduction(max : bm)
    for (int64_t j = 0; j < n; ++j) {
      const float z = to_float(x[j0 + j]) * inv_t;
      buf[j] = z;
      bm = bm > z ? bm : z;
    }
    if (bm == -INFINITY) continue;  // a block of -inf logits adds nothing
    const float newM = M > bm ? M : bm;
    if (newM != M) {
      const float scale = exp_nonpos(M - newM);  // M = -inf: scale ~0, and S = D = 0 anyway
      D = scale * (D + S * (M == -INFINITY ? 0.f : (M - newM)));
      S *= scale;
      M = newM;
    }
    float bs = 0.f, bd = 0.f;
    if (want_entropy) {
#pragma omp simd reduction(+ : bs, bd)
      for (int64_t j = 0; j < n; ++j) {
        const float d = std::max(buf[j] - M, -87.0f);  // a -inf logit adds 0, not 0 * -inf
        const float e = exp_nonpos(d);
        bs += e;
        bd += e * d;
      }
    } else {
#pragma omp simd reduction(+ : bs)
      for (int64_t j = 0; j < n; ++j) bs += exp_nonpos(buf[j] - M);
    }
    S += bs;
    D += bd;
  }
  const float logS = std::log(S);
  *lse = M + logS;
  *logp = to_float(x[id]) * inv_t - *lse;
  if (want_entropy) *entropy = logS - D / S;
}

template <typename T>
MEDIX_INLINE void logprob_row_bwd(const T* x, T* out, int64_t V, float inv_t, int64_t id, float lse, float g_lp,
                                  float g_h, float h) {
  // With d = z - lse (clamped at -87 so a -inf logit gives p = 0 and no 0 * inf):
  //   dx = (1/T) * p * (-g_lp - g_H * (d + H)), plus g_lp / T at the sampled id.
  const float a = -g_lp * inv_t, b = -g_h * inv_t;
  // x and out may alias (in place): no __restrict__, each element read then written.
  const float d_id = std::max(to_float(x[id]) * inv_t - lse, -87.0f);
  const float p_id = exp_nonpos(d_id);
  if (g_h == 0.f) {
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) out[j] = from_float<T>(a * exp_nonpos(to_float(x[j]) * inv_t - lse));
  } else {
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) {
      const float d = std::max(to_float(x[j]) * inv_t - lse, -87.0f);
      out[j] = from_float<T>(exp_nonpos(d) * (a + b * (d + h)));
    }
  }
  // onehot term, from the saved logit (out[id] may already hold the gradient)
  out[id] = from_float<T>(p_id * (a + b * (d_id + h)) + g_lp * inv_t);
}

template <typename T>
MEDIX_INLINE void logprob_fwd_range(const LogprobParams& p, int64_t b, int64_t e) {
  const T* x = static_cast<const T*>(p.logits);
  const float inv_t = 1.f / p.temperature;
  for (int64_t t = b; t < e; ++t)
    logprob_row_fwd<T>(x + t * p.row_stride, p.V, inv_t, p.ids[t], p.entropy != nullptr, p.logp + t, p.lse + t,
                       p.entropy ? p.entropy + t : nullptr);
}

template <typename T>
MEDIX_INLINE void logprob_bwd_range(const LogprobParams& p, int64_t b, int64_t e) {
  const T* x = static_cast<const T*>(p.logits);
  T* out = static_cast<T*>(p.grad_logits);
  const float inv_t = 1.f / p.temperature;
  for (int64_t t = b; t < e; ++t) {
    const float gh = p.grad_entropy ? p.grad_entropy[t] : 0.f;
    const float h = p.grad_entropy ? p.entropy[t] : 0.f;
    logprob_row_bwd<T>(x + t * p.row_stride, out + t * p.grad_row_stride, p.V, inv_t, p.ids[t], p.lse[t],
                       p.grad_logp[t], gh, h);
  }
}

}  // namespace cpu
}  // namespace medix

#include "logprob_vec.h"

namespace medix {
namespace cpu {

// The portable instances (compiled for baseline x86-64, vectorised by the compiler); AVX2 and
// AVX-512: logprob_vec.h.
template <typename T>
using RangeFn = void (*)(const LogprobParams&, int64_t, int64_t);

template <typename T>
void logprob_fwd_range_base(const LogprobParams& p, int64_t b, int64_t e) { logprob_fwd_range<T>(p, b, e); }
template <typename T>
void logprob_bwd_range_base(const LogprobParams& p, int64_t b, int64_t e) { logprob_bwd_range<T>(p, b, e); }

template <typename T>
RangeFn<T> pick(RangeFn<T> base, RangeFn<T> avx2, RangeFn<T> avx512) {
  const int level = cpu_level();
  return level == 2 ? avx512 : level == 1 ? avx2 : base;
}

template <typename T, typename ParallelFor>
void logprob_fwd(const LogprobParams& p, ParallelFor pf) {
#if MEDIX_HAS_ISA_VARIANTS
  RangeFn<T> fn = pick<T>(logprob_fwd_range_base<T>, logprob_fwd_range_avx2<T>, logprob_fwd_range_avx512<T>);
#else
  RangeFn<T> fn = logprob_fwd_range_base<T>;
#endif
  pf(0, p.T, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, p.V)), [&](int64_t b, int64_t e) { fn(p, b, e); });
}

template <typename T, typename ParallelFor>
void logprob_bwd(const LogprobParams& p, ParallelFor pf) {
#if MEDIX_HAS_ISA_VARIANTS
  RangeFn<T> fn = pick<T>(logprob_bwd_range_base<T>, logprob_bwd_range_avx2<T>, logprob_bwd_range_avx512<T>);
#else
  RangeFn<T> fn = logprob_bwd_range_base<T>;
#endif
  pf(0, p.T, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, p.V)), [&](int64_t b, int64_t e) { fn(p, b, e); });
}

}  // namespace cpu
}  // namespace medix
