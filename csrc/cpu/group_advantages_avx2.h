// AVX2 + FMA kernels of the group advantages: fixed groups (the tiles of
// group_advantages_avx2_tile.h), ragged groups and composite totals, fp32. Included by
// group_advantages.h; every function here is compiled for AVX2 + FMA only (GCC target attributes)
// and is only called after cpu_level() reported it.
//
// Ragged groups (any size >= 2), 8 at a time: a vector loop per group into one vector of partial
// statistics per group, reduced by the tiles' tree. Composite totals (K = 4): 8 rows transposed in
// registers, the weighted sum in double in row_total's order, so the fp32 totals are bit-identical
// to every other kernel's. A group whose statistics are not finite is redone by general_groups.
#pragma once
#include <type_traits>

#include "group_advantages_avx2_tile.h"
#include "isa.h"

#if MEDIX_HAS_ISA_VARIANTS
#include <immintrin.h>

namespace medix {
namespace cpu {
namespace avx2 {

#define MEDIX_V256 inline __attribute__((always_inline)) MEDIX_TARGET_AVX2

// The first c lanes (1..8) set: 8 - c entries into {-1 x 8, 0 x 8}.
alignas(64) inline constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
MEDIX_V256 __m256i first_lanes(int64_t c) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - c));
}

// A ragged group's rows as vectors: a group of up to 16 rows is two vectors whatever its size
// (lanes past it masked), so groups of random sizes cost no mispredicted branches; a larger one
// is a loop over its vectors, the last one partial. Loads are whole (then masked) when they stay
// inside the N rows, else masked loads.
struct Span { const float* x; int64_t c; bool whole; };

template <bool kNanToZero>
MEDIX_V256 __m256 load_part(const float* x, __m256i m, bool whole) {
  const __m256 v = whole ? _mm256_and_ps(_mm256_loadu_ps(x), _mm256_castsi256_ps(m)) : _mm256_maskload_ps(x, m);
  return kNanToZero ? finite_or_zero(v) : v;
}

// Calls f(v, mask) for every vector of the group (a whole vector's mask is all ones).
template <bool kNanToZero, class F>
MEDIX_V256 void for_vectors(const Span& g, F f) {
  if (g.c <= 16) {
    const __m256i m0 = first_lanes(std::min<int64_t>(g.c, 8)), m1 = first_lanes(std::max<int64_t>(g.c - 8, 0));
    f(load_part<kNanToZero>(g.x, m0, g.whole), m0, 0);
    f(load_part<kNanToZero>(g.x + 8, m1, g.whole), m1, 8);
    return;
  }
  const int64_t full = g.c & ~int64_t(7);
  const __m256i all = first_lanes(8);
  for (int64_t i = 0; i < full; i += 8) f(load<kNanToZero>(g.x + i), all, i);
  if (full < g.c) {
    const __m256i m = first_lanes(g.c - full);
    f(load_part<kNanToZero>(g.x + full, m, g.whole), m, full);
  }
}

template <bool kNanToZero> struct SumMinMax {
  __m256 *s, *lo, *hi;
  MEDIX_V256 void operator()(__m256 v, __m256i m, int64_t) const {
    const __m256 mf = _mm256_castsi256_ps(m);
    *s = _mm256_add_ps(*s, v);
    *lo = _mm256_min_ps(*lo, _mm256_blendv_ps(_mm256_set1_ps(INFINITY), v, mf));
    *hi = _mm256_max_ps(*hi, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), v, mf));
  }
};
struct SquaredDeviations {
  __m256 *acc, mean;
  MEDIX_V256 void operator()(__m256 v, __m256i m, int64_t) const {
    const __m256 d = _mm256_and_ps(_mm256_sub_ps(v, mean), _mm256_castsi256_ps(m));
    *acc = _mm256_fmadd_ps(d, d, *acc);
  }
};
// (v - mean) * factor into out (and v into total): whole stores when they stay inside the range's
// rows (the lanes past the group are rewritten by the groups after it), else masked stores.
struct StoreAdvantages {
  float *out, *total;
  __m256 mean, factor;
  bool whole;
  MEDIX_V256 void operator()(__m256 v, __m256i m, int64_t i) const {
    const __m256 y = _mm256_mul_ps(_mm256_sub_ps(v, mean), factor);
    if (whole) _mm256_storeu_ps(out + i, y); else _mm256_maskstore_ps(out + i, m, y);
    if (total) { if (whole) _mm256_storeu_ps(total + i, v); else _mm256_maskstore_ps(total + i, m, v); }
  }
};

// Ragged groups of plain fp32 rewards, 8 groups per step: each group's vectors accumulate into one
// vector of partial statistics (sum, min, max, then squared deviations), and the tile's tree
// turns the 8 groups' vectors into one vector of 8 statistics, so the std, the factor and the
// checks are lane-wise as for fixed groups. Groups of fewer than 2 rows, and groups whose
// statistics are not finite, go through general_groups.
template <bool kNanToZero>
MEDIX_V256 void ragged_range(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  const float* x = static_cast<const float*>(p.values);
  float* out = static_cast<float*>(p.adv);
  const int64_t end = p.offsets[ge];
  const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile_order<8>().order));
  const __m256 one = _mm256_set1_ps(1.f);
  const TileAffine a = tile_affine(p, 2, batch_std);  // rloo's factor, c / (c - 1), is per group here
  const bool rloo = p.mode == int(AdvMode::kRloo);
  for (int64_t g0 = gb; g0 < ge; g0 += 8) {
    const int nb = int(std::min<int64_t>(8, ge - g0));
    int64_t rows[8];
    Span span[8];
    alignas(32) float cnt[8], mean[8], stdv[8], factor[8];
    __m256 s[8], lo[8], hi[8];
    int redo = 0;  // lanes whose group goes through general_groups
    for (int l = 0; l < 8; ++l) {
      rows[l] = l < nb ? p.offsets[g0 + l] : 0;
      const int64_t c = l < nb ? p.offsets[g0 + l + 1] - rows[l] : 0;
      const bool small = c < 2;  // past the range, empty or a singleton: a neutral lane
      redo |= (small && l < nb) << l;
      span[l] = {x + rows[l], small ? 0 : c, rows[l] + std::max<int64_t>(16, (c + 7) & ~int64_t(7)) <= p.n};
      cnt[l] = small ? 2.f : float(c);
      s[l] = _mm256_setzero_ps();
      lo[l] = small ? s[l] : _mm256_set1_ps(INFINITY);
      hi[l] = small ? s[l] : _mm256_set1_ps(-INFINITY);
      for_vectors<kNanToZero>(span[l], SumMinMax<kNanToZero>{&s[l], &lo[l], &hi[l]});
    }
    const __m256 cv = _mm256_load_ps(cnt);
    const __m256 mv = _mm256_div_ps(_mm256_permutevar8x32_ps(tree<8>(s, AddOp{}), order), cv);
    const __m256 lov = _mm256_permutevar8x32_ps(tree<8>(lo, MinOp{}), order);
    const __m256 hiv = _mm256_permutevar8x32_ps(tree<8>(hi, MaxOp{}), order);
    _mm256_store_ps(mean, mv);
    for (int l = 0; l < 8; ++l) {  // s[l]: the squared deviations from here on
      s[l] = _mm256_setzero_ps();
      for_vectors<kNanToZero>(span[l], SquaredDeviations{&s[l], _mm256_set1_ps(mean[l])});
    }
    const __m256 ss = _mm256_permutevar8x32_ps(tree<8>(s, AddOp{}), order);
    const int finite = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(mv, mv), _mm256_setzero_ps(), _CMP_EQ_OQ)) &
                       _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(ss, ss), _mm256_setzero_ps(), _CMP_EQ_OQ));
    redo |= ~finite & ((1 << nb) - 1);
    const __m256 sd = _mm256_sqrt_ps(_mm256_div_ps(ss, _mm256_sub_ps(cv, one)));
    const __m256 f = rloo ? _mm256_div_ps(cv, _mm256_sub_ps(cv, one))
                   : a.by_std ? _mm256_div_ps(one, _mm256_add_ps(sd, _mm256_set1_ps(a.eps)))
                              : _mm256_set1_ps(a.constant);
    const __m256 deg = _mm256_cmp_ps(lov, hiv, _CMP_EQ_OQ);
    _mm256_store_ps(stdv, sd);
    _mm256_store_ps(factor, _mm256_andnot_ps(deg, f));
    const int degbits = _mm256_movemask_ps(deg);
    for (int l = 0; l < nb; ++l) {
      const int64_t g = g0 + l;
      if (p.group_mean) p.group_mean[g] = mean[l];
      if (p.group_std) p.group_std[g] = stdv[l];
      if (p.degenerate) p.degenerate[g] = (degbits >> l) & 1;
    }
    for (int l = 0; l < nb; ++l) {
      if ((redo >> l) & 1) { general_groups<float, float>(p, g0 + l, g0 + l + 1, batch_std); continue; }
      const StoreAdvantages st{out + rows[l], p.total ? p.total + rows[l] : nullptr, _mm256_set1_ps(mean[l]),
                               _mm256_set1_ps(factor[l]), rows[l] + std::max<int64_t>(16, (span[l].c + 7) & ~int64_t(7)) <= end};
      for_vectors<kNanToZero>(span[l], st);
    }
  }
}

// Plain fp32 rewards: the vector kernel for the supported sizes; false: not handled.
MEDIX_V256 bool fixed_float(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  if (p.k != 1 || p.weights || p.stride_n != 1) return false;
  if (p.offsets) {
    if (p.nan_to_zero) ragged_range<true>(p, gb, ge, batch_std);
    else ragged_range<false>(p, gb, ge, batch_std);
    return true;
  }
  switch (p.group_size) {
    case 2: fixed_range<2>(p, gb, ge, batch_std); return true;
    case 3: fixed_range<3>(p, gb, ge, batch_std); return true;
    case 4: fixed_range<4>(p, gb, ge, batch_std); return true;
    case 5: fixed_range<5>(p, gb, ge, batch_std); return true;
    case 6: fixed_range<6>(p, gb, ge, batch_std); return true;
    case 7: fixed_range<7>(p, gb, ge, batch_std); return true;
    case 8: fixed_range<8>(p, gb, ge, batch_std); return true;
    case 9: fixed_range<9>(p, gb, ge, batch_std); return true;
    case 10: fixed_range<10>(p, gb, ge, batch_std); return true;
    case 11: fixed_range<11>(p, gb, ge, batch_std); return true;
    case 12: fixed_range<12>(p, gb, ge, batch_std); return true;
    case 13: fixed_range<13>(p, gb, ge, batch_std); return true;
    case 14: fixed_range<14>(p, gb, ge, batch_std); return true;
    case 15: fixed_range<15>(p, gb, ge, batch_std); return true;
    case 16: fixed_range<16>(p, gb, ge, batch_std); return true;
    case 24: fixed_range<24>(p, gb, ge, batch_std); return true;
    case 32: fixed_range<32>(p, gb, ge, batch_std); return true;
    case 48: fixed_range<48>(p, gb, ge, batch_std); return true;
    case 64: fixed_range<64>(p, gb, ge, batch_std); return true;
    default: return false;
  }
}

// Totals of fp32 rows [i0, i1) with K = 4 contiguous components (MediX-R1's four), 8 rows per
// step: 4 contiguous loads, a 4 x 4 transpose inside each 128-bit lane (component j of the 8 rows
// in one vector: rows 0, 2, 4, 6 in the low lane, 1, 3, 5, 7 in the high one), the weighted sum
// in double in row_total's order, one permute back to row order.
MEDIX_V256 void totals_k4(const GroupAdvParams& p_in, int64_t i0, int64_t i1) {
  const GroupAdvParams p = p_in;
  const float* x = static_cast<const float*>(p.values);
  const __m256i back = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256d w[4];
  for (int j = 0; j < 4; ++j) w[j] = _mm256_set1_pd(double(p.weights[j]));
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    const float* b = x + i * 4;
    __m256 v[4];
    for (int r = 0; r < 4; ++r) v[r] = p.nan_to_zero ? load<true>(b + 8 * r) : load<false>(b + 8 * r);
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    __m256 c[4];
    c[0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    c[1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    c[2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    c[3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (int j = 0; j < 4; ++j) {  // acc += w_j * x_j, the product exact in double
      lo = _mm256_add_pd(lo, _mm256_mul_pd(w[j], _mm256_cvtps_pd(_mm256_castps256_ps128(c[j]))));
      hi = _mm256_add_pd(hi, _mm256_mul_pd(w[j], _mm256_cvtps_pd(_mm256_extractf128_ps(c[j], 1))));
    }
    const __m256 t = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    _mm256_storeu_ps(p.total + i, _mm256_permutevar8x32_ps(t, back));
  }
  for (; i < i1; ++i) p.total[i] = row_total<float>(p, i);
}

// The AVX2 kernels as group_range_with (group_advantages.h) uses them: calls
// per block of groups, not inlined (a target-less template cannot inline target code).
struct Kernels {
  template <typename T>
  static MEDIX_TARGET_AVX2 void totals(const GroupAdvParams& p, int64_t i0, int64_t i1) {
    if (std::is_same<T, float>::value && p.k == 4 && p.stride_n == 4 && p.stride_k == 1) totals_k4(p, i0, i1);
    else for (int64_t i = i0; i < i1; ++i) p.total[i] = row_total<T>(p, i);
  }
  static MEDIX_TARGET_AVX2 bool float_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
    return fixed_float(p, gb, ge, batch_std);
  }
};

#undef MEDIX_V256

}  // namespace avx2
}  // namespace cpu
}  // namespace medix
#endif
