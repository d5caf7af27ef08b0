// The log-prob / entropy row kernels written with explicit vectors (simd.h traits), compiled for
// AVX2 + FMA (8 lanes) and AVX-512 (16 lanes); the maths is logprob.h's. Included by logprob.h.
//
// e^x for x <= 0 is exp_vec: x = n ln2 + y (|y| <= ln2 / 2, ln2 in two parts so y is exact to
// fp32 rounding), e^y by a degree-5 polynomial fitted for the least maximum relative error
// (kExpC*, shared with the scalar exp_nonpos), 2^n built in the exponent bits. Its relative error
// is below 2.5e-7 over [-87, 0] (measured on every fp32 input by csrc/tests/test_logprob_cpu.cpp;
// the bound is in tests/tolerances.py). Below -87 the result is ~0 (e^-87 < 2e-38).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "../common/logprob_params.h"
#include "simd.h"

#if MEDIX_HAS_ISA_VARIANTS
namespace medix {
namespace cpu {

template <class V>
inline typename V::F exp_vec(const typename V::F& x_in) {
  using F = typename V::F;
  const F x = V::max(x_in, V::set1(-87.f));
  const F n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  F y = V::fnmadd(n, V::set1(0.693359375f), x);  // x - n ln2, ln2 = 0.693359375 - 2.12194440e-4
  y = V::fnmadd(n, V::set1(-2.12194440e-4f), y);
  F p = V::fmadd(V::set1(kExpC5), y, V::set1(kExpC4));
  p = V::fmadd(p, y, V::set1(kExpC3));
  p = V::fmadd(p, y, V::set1(kExpC2));
  p = V::fmadd(p, y, V::set1(kExpC1));
  p = V::fmadd(p, y, V::set1(1.f));
  return V::mul(p, V::pow2(n));
}

// One row's lse (and entropy): blocks of kLogprobBlock logits; a block's scaled logits go to an
// L1 buffer with their maximum, the running sums are rescaled to a new maximum once per block, and
// the block's exponentials are summed in W-lane partial sums (two vectors per step, two chains).
template <class V, typename T>
inline void row_fwd_vec(const T* x, int64_t n_vocab, float inv_t, int64_t id, bool want_entropy, float* logp,
                        float* lse, float* entropy) {
  using F = typename V::F;
  constexpr int W = V::W;
  alignas(64) float buf[kLogprobBlock];
  const F vt = V::set1(inv_t), floor = V::set1(-87.f);
  float M = -INFINITY, S = 0.f, D = 0.f;
  for (int64_t j0 = 0; j0 < n_vocab; j0 += kLogprobBlock) {
    const int n = int(std::min<int64_t>(kLogprobBlock, n_vocab - j0));
    const int full = n & ~(W - 1);
    F vm = V::set1(-INFINITY);
    for (int j = 0; j < full; j += W) {
      const F z = V::mul(V::load(x + j0 + j), vt);
      V::store(buf + j, z);
      vm = V::max(vm, z);
    }
    if (full < n) {  // the tail, padded with -inf (adds e^-inf ~ 0 below)
      const F z = V::mul(V::template load_n<T>(x + j0 + full, n - full, -INFINITY), vt);
      V::store(buf + full, z);
      vm = V::max(vm, z);
    }
    const float bm = V::reduce_max(vm);
    if (bm == -INFINITY) continue;  // a block of -inf logits adds nothing
    if (bm > M) {
      const float scale = exp_nonpos(M - bm);  // M = -inf: scale ~0, and S = D = 0 anyway
      D = scale * (D + S * (M == -INFINITY ? 0.f : (M - bm)));
      S *= scale;
      M = bm;
    }
    const int padded = (n + W - 1) & ~(W - 1);
    const F vM = V::set1(M);
    F s0 = V::set1(0.f), s1 = s0, d0 = s0, d1 = s0;
    int j = 0;
    if (want_entropy) {
      for (; j + 2 * W <= padded; j += 2 * W) {  // d clamped: a -inf logit adds 0, not 0 * -inf
        const F a = V::max(V::sub(V::load(buf + j), vM), floor), b = V::max(V::sub(V::load(buf + j + W), vM), floor);
        const F ea = exp_vec<V>(a), eb = exp_vec<V>(b);
        s0 = V::add(s0, ea); s1 = V::add(s1, eb);
        d0 = V::fmadd(ea, a, d0); d1 = V::fmadd(eb, b, d1);
      }
      for (; j < padded; j += W) {
        const F a = V::max(V::sub(V::load(buf + j), vM), floor);
        const F ea = exp_vec<V>(a);
        s0 = V::add(s0, ea); d0 = V::fmadd(ea, a, d0);
      }
    } else {
      for (; j + 2 * W <= padded; j += 2 * W) {
        s0 = V::add(s0, exp_vec<V>(V::sub(V::load(buf + j), vM)));
        s1 = V::add(s1, exp_vec<V>(V::sub(V::load(buf + j + W), vM)));
      }
      for (; j < padded; j += W) s0 = V::add(s0, exp_vec<V>(V::sub(V::load(buf + j), vM)));
    }
    S += V::reduce_add(V::add(s0, s1));
    D += V::reduce_add(V::add(d0, d1));
  }
  const float logS = std::log(S);
  *lse = M + logS;
  *logp = to_float(x[id]) * inv_t - *lse;
  if (want_entropy) *entropy = logS - D / S;
}

// One row's gradient (x and out may alias: each vector is read before it is written):
//   dx = (1/T) p (-g_lp - g_H (d + H)) with d = z - lse clamped at -87, plus g_lp / T at id.
template <class V, typename T>
inline void row_bwd_vec(const T* x, T* out, int64_t n_vocab, float inv_t, int64_t id, float lse, float g_lp, float g_h,
                        float h) {
  using F = typename V::F;
  constexpr int W = V::W;
  const float a = -g_lp * inv_t, b = -g_h * inv_t;
  const float d_id = std::max(to_float(x[id]) * inv_t - lse, -87.0f);  // before out[id] is written
  const float g_id = exp_nonpos(d_id) * (a + b * (d_id + h)) + g_lp * inv_t;
  const F vt = V::set1(inv_t), vl = V::set1(-lse), va = V::set1(a), vb = V::set1(b), vh = V::set1(h),
          floor = V::set1(-87.f);
  const int64_t full = n_vocab & ~int64_t(W - 1);
  if (g_h == 0.f) {
    for (int64_t j = 0; j < full; j += W)
      V::store(out + j, V::mul(va, exp_vec<V>(V::fmadd(V::load(x + j), vt, vl))));
    if (full < n_vocab) {
      const int r = int(n_vocab - full);
      V::template store_n<T>(out + full, V::mul(va, exp_vec<V>(V::fmadd(V::template load_n<T>(x + full, r, 0.f), vt, vl))), r);
    }
  } else {
    for (int64_t j = 0; j < full; j += W) {
      const F d = V::max(V::fmadd(V::load(x + j), vt, vl), floor);
      V::store(out + j, V::mul(exp_vec<V>(d), V::fmadd(vb, V::add(d, vh), va)));
    }
    if (full < n_vocab) {
      const int r = int(n_vocab - full);
      const F d = V::max(V::fmadd(V::template load_n<T>(x + full, r, 0.f), vt, vl), floor);
      V::template store_n<T>(out + full, V::mul(exp_vec<V>(d), V::fmadd(vb, V::add(d, vh), va)), r);
    }
  }
  out[id] = from_float<T>(g_id);
}

template <class V, typename T>
inline void logprob_fwd_rows_vec(const LogprobParams& p, int64_t b, int64_t e) {
  const T* x = static_cast<const T*>(p.logits);
  const float inv_t = 1.f / p.temperature;
  for (int64_t t = b; t < e; ++t)
    row_fwd_vec<V, T>(x + t * p.row_stride, p.V, inv_t, p.ids[t], p.entropy != nullptr, p.logp + t, p.lse + t,
                      p.entropy ? p.entropy + t : nullptr);
}

template <class V, typename T>
inline void logprob_bwd_rows_vec(const LogprobParams& p, int64_t b, int64_t e) {
  const T* x = static_cast<const T*>(p.logits);
  T* out = static_cast<T*>(p.grad_logits);
  const float inv_t = 1.f / p.temperature;
  for (int64_t t = b; t < e; ++t) {
    const float gh = p.grad_entropy ? p.grad_entropy[t] : 0.f;
    const float h = p.grad_entropy ? p.entropy[t] : 0.f;
    row_bwd_vec<V, T>(x + t * p.row_stride, out + t * p.grad_row_stride, p.V, inv_t, p.ids[t], p.lse[t],
                      p.grad_logp[t], gh, h);
  }
}

// The entry points per ISA: flatten inlines the templates and the traits into one body.
template <typename T>
MEDIX_TARGET_AVX2 __attribute__((flatten)) void logprob_fwd_range_avx2(const LogprobParams& p, int64_t b, int64_t e) {
  logprob_fwd_rows_vec<Vec8, T>(p, b, e);
}
template <typename T>
MEDIX_TARGET_AVX2 __attribute__((flatten)) void logprob_bwd_range_avx2(const LogprobParams& p, int64_t b, int64_t e) {
  logprob_bwd_rows_vec<Vec8, T>(p, b, e);
}
template <typename T>
MEDIX_TARGET_AVX512 __attribute__((flatten)) void logprob_fwd_range_avx512(const LogprobParams& p, int64_t b,
                                                                           int64_t e) {
  logprob_fwd_rows_vec<Vec16, T>(p, b, e);
}
template <typename T>
MEDIX_TARGET_AVX512 __attribute__((flatten)) void logprob_bwd_range_avx512(const LogprobParams& p, int64_t b,
                                                                           int64_t e) {
  logprob_bwd_rows_vec<Vec16, T>(p, b, e);
}

}  // namespace cpu
}  // namespace medix

#endif
