// AVX-512 kernels of the group advantages (fp32 rewards in fixed groups, composite totals).
// Included by group_advantages.h; every function here is compiled for AVX-512 only (GCC target
// attributes) and is only called after cpu_level() reported AVX-512.
//
// A tile is 16 consecutive groups: 16 * G contiguous floats, i.e. G vectors of 16 lanes. Its
// statistics are computed as vectors of 16 (one lane per group):
//  - G = 2, 4, 8 and multiples of 16: a shuffle tree reduces the tile's vectors (each holding
//    whole groups, or whole vectors per group) to one vector of 16 per-group sums (min, max);
//    the tree leaves the groups in a fixed lane order, found once by running it on labels
//    (tile_order) and undone with one permute;
//  - other G up to 15: member j of the 16 groups is one gather (stride G).
// Composite totals (K = 4): a transpose of 16 rows in registers, accumulated in double.
// Then mean, unbiased std, the degenerate mask (min == max) and the affine factor are lane-wise
// vector ops (one sqrt and one division per 16 groups), and each output vector picks its
// groups' shift and factor with a permute: A = (r - mean) * factor, as the scalar kernel.
// Ragged groups of 2..16 fp32 rewards: one masked vector per group, in-register reductions.
// A tile whose mean is not finite (NaN/inf rewards) is redone by the scalar kernel, so those
// cases keep the scalar semantics exactly.
#pragma once
#include <type_traits>

#include "isa.h"

#if MEDIX_HAS_ISA_VARIANTS
#include <immintrin.h>

// GCC 12's AVX-512 headers trip -Wuninitialized (their _mm512_undefined_ps) once inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace medix {
namespace cpu {
namespace avx512 {

#define MEDIX_V512 inline __attribute__((always_inline)) MEDIX_TARGET_AVX512

struct AddOp { MEDIX_V512 __m512 operator()(__m512 a, __m512 b) const { return _mm512_add_ps(a, b); } };
struct MinOp { MEDIX_V512 __m512 operator()(__m512 a, __m512 b) const { return _mm512_min_ps(a, b); } };
struct MaxOp { MEDIX_V512 __m512 operator()(__m512 a, __m512 b) const { return _mm512_max_ps(a, b); } };

// Tree levels: each combines two vectors whose lanes hold groups in blocks of 16, 8, 4 or 2
// lanes into one vector holding twice as many groups in blocks half as wide.
template <class Op> MEDIX_V512 __m512 level1(__m512 a, __m512 b, Op op) {
  return op(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
template <class Op> MEDIX_V512 __m512 level2(__m512 a, __m512 b, Op op) {
  return op(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}
template <class Op> MEDIX_V512 __m512 level3(__m512 a, __m512 b, Op op) {
  return op(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
template <class Op> MEDIX_V512 __m512 level4(__m512 a, __m512 b, Op op) {
  return op(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// R vectors (16, 8, 4 or 2; each holding 16 / R... groups as above) -> one vector of 16 groups.
template <int R, class Op> MEDIX_V512 __m512 tree(__m512* v, Op op) {
  if constexpr (R >= 16) for (int i = 0; i < 8; ++i) v[i] = level1(v[2 * i], v[2 * i + 1], op);
  if constexpr (R >= 8) for (int i = 0; i < 4; ++i) v[i] = level2(v[2 * i], v[2 * i + 1], op);
  if constexpr (R >= 4) for (int i = 0; i < 2; ++i) v[i] = level3(v[2 * i], v[2 * i + 1], op);
  if constexpr (R >= 2) v[0] = level4(v[0], v[1], op);
  return v[0];
}

template <int G> constexpr bool kTreeSize = G == 2 || G == 4 || G == 8 || (G >= 16 && G % 16 == 0);
template <int G> constexpr int kTreeR = G < 16 ? G : 16;  // vectors entering the tree
template <int G> constexpr int kTreeM = G < 16 ? 1 : G / 16;  // vectors per tree input

// lane l of the in-order vector = lane order[l] of the tree's output
struct TileOrder { alignas(64) int32_t order[16]; bool ok; };

template <int G>
MEDIX_TARGET_AVX512 __attribute__((noinline)) TileOrder make_tile_order() {
  // Run the min tree on a tile whose group l holds the value l everywhere.
  constexpr int R = kTreeR<G>, M = kTreeM<G>;
  alignas(64) float x[16 * G];
  for (int i = 0; i < 16 * G; ++i) x[i] = float(i / G);
  __m512 v[R];
  for (int r = 0; r < R; ++r) {
    v[r] = _mm512_loadu_ps(x + r * M * 16);
    for (int i = 1; i < M; ++i) v[r] = _mm512_min_ps(v[r], _mm512_loadu_ps(x + (r * M + i) * 16));
  }
  alignas(64) float lanes[16];
  _mm512_storeu_ps(lanes, tree<R>(v, MinOp{}));
  TileOrder t{};
  t.ok = true;
  for (int l = 0; l < 16; ++l) {
    int found = -1;
    for (int q = 0; q < 16; ++q) if (lanes[q] == float(l)) { found = found < 0 ? q : -2; }
    if (found < 0) t.ok = false;
    t.order[l] = found < 0 ? 0 : found;
  }
  return t;
}

template <int G> inline const TileOrder& tile_order() {
  static const TileOrder t = make_tile_order<G>();
  return t;
}

// Whether every tree layout checks out (it must; if not, the scalar kernels are used).
inline bool tile_orders_ok() {
  static const bool ok = tile_order<2>().ok && tile_order<4>().ok && tile_order<8>().ok && tile_order<16>().ok &&
                         tile_order<32>().ok && tile_order<48>().ok && tile_order<64>().ok;
  return ok;
}

// idx[16 v + e] = (16 v + e) / G: the group (0..15) of lane e of the tile's vector v.
template <int G> struct LaneGroups {
  int32_t idx[16 * G];
  constexpr LaneGroups() : idx() { for (int i = 0; i < 16 * G; ++i) idx[i] = i / G; }
};
template <int G> inline constexpr LaneGroups<G> kLaneGroups{};

template <bool kNanToZero> MEDIX_V512 __m512 load(const float* x) {
  __m512 v = _mm512_loadu_ps(x);
  if constexpr (kNanToZero) {  // finite <=> x - x == 0
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ), v);
  }
  return v;
}

template <bool kNanToZero> MEDIX_V512 __m512 gather(__m512i idx, const float* x) {
  __m512 v = _mm512_i32gather_ps(idx, x, 4);
  if constexpr (kNanToZero) {
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ), v);
  }
  return v;
}

// The statistics of one tile (in-order lanes) -> stats outputs, factor; false if a mean or a
// sum of squared deviations is not finite (NaN / inf rewards, or fp32 overflow): the caller
// redoes the tile with the scalar kernel, which redoes overflowing groups in double.
MEDIX_V512 bool finish_stats(const GroupAdvParams& p, int64_t g0, int G, __m512 mean, __m512 ss, __m512 lo, __m512 hi,
                             const TileAffine& a, __m512* factor) {
  if (_mm512_cmp_ps_mask(_mm512_sub_ps(mean, mean), _mm512_setzero_ps(), _CMP_EQ_OQ) != 0xFFFF) return false;
  if (_mm512_cmp_ps_mask(_mm512_sub_ps(ss, ss), _mm512_setzero_ps(), _CMP_EQ_OQ) != 0xFFFF) return false;
  const __m512 stdv = _mm512_sqrt_ps(_mm512_mul_ps(ss, _mm512_set1_ps(1.f / float(G - 1))));
  const __mmask16 deg = _mm512_cmp_ps_mask(lo, hi, _CMP_EQ_OQ);
  __m512 f = a.by_std ? _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(stdv, _mm512_set1_ps(a.eps)))
                      : _mm512_set1_ps(a.constant);
  *factor = _mm512_maskz_mov_ps(__mmask16(~deg), f);
  if (p.group_mean) _mm512_storeu_ps(p.group_mean + g0, mean);
  if (p.group_std) _mm512_storeu_ps(p.group_std + g0, stdv);
  if (p.degenerate)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p.degenerate + g0), _mm_maskz_mov_epi8(deg, _mm_set1_epi8(1)));
  return true;
}

// out (and total, if asked) of one tile from in-order mean and factor.
template <int G, bool kNanToZero>
MEDIX_V512 void write_tile(const float* x, float* out, float* total, __m512 mean, __m512 factor) {
  const int32_t* idx = kLaneGroups<G>.idx;
  for (int v = 0; v < G; ++v) {
    const __m512 r = load<kNanToZero>(x + 16 * v);
    const __m512i iv = _mm512_loadu_si512(idx + 16 * v);
    const __m512 y = _mm512_mul_ps(_mm512_sub_ps(r, _mm512_permutexvar_ps(iv, mean)), _mm512_permutexvar_ps(iv, factor));
    _mm512_storeu_ps(out + 16 * v, y);
    if (total) _mm512_storeu_ps(total + 16 * v, r);
  }
}

template <int G, bool kNanToZero>
MEDIX_V512 bool tree_tile(const GroupAdvParams& p, const float* x, float* out, float* total, int64_t g0,
                          const TileAffine& a, const __m512i order) {
  constexpr int R = kTreeR<G>, M = kTreeM<G>;
  __m512 v[R];
  // Sums, then min, then max: one tree each (the tile, 16 * G floats, stays in L1 meanwhile).
  for (int r = 0; r < R; ++r) {
    v[r] = load<kNanToZero>(x + r * M * 16);
    for (int i = 1; i < M; ++i) v[r] = _mm512_add_ps(v[r], load<kNanToZero>(x + (r * M + i) * 16));
  }
  const __m512 mean = _mm512_mul_ps(_mm512_permutexvar_ps(order, tree<R>(v, AddOp{})), _mm512_set1_ps(1.f / float(G)));
  for (int r = 0; r < R; ++r) {
    v[r] = load<kNanToZero>(x + r * M * 16);
    for (int i = 1; i < M; ++i) v[r] = _mm512_min_ps(v[r], load<kNanToZero>(x + (r * M + i) * 16));
  }
  const __m512 lo = _mm512_permutexvar_ps(order, tree<R>(v, MinOp{}));
  for (int r = 0; r < R; ++r) {
    v[r] = load<kNanToZero>(x + r * M * 16);
    for (int i = 1; i < M; ++i) v[r] = _mm512_max_ps(v[r], load<kNanToZero>(x + (r * M + i) * 16));
  }
  const __m512 hi = _mm512_permutexvar_ps(order, tree<R>(v, MaxOp{}));
  // Sum of squared deviations from each lane's own group mean.
  const int32_t* idx = kLaneGroups<G>.idx;
  for (int r = 0; r < R; ++r) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < M; ++i) {
      const int q = r * M + i;
      const __m512 d = _mm512_sub_ps(load<kNanToZero>(x + q * 16),
                                     _mm512_permutexvar_ps(_mm512_loadu_si512(idx + 16 * q), mean));
      acc = _mm512_fmadd_ps(d, d, acc);
    }
    v[r] = acc;
  }
  const __m512 ss = _mm512_permutexvar_ps(order, tree<R>(v, AddOp{}));
  __m512 factor;
  if (!finish_stats(p, g0, G, mean, ss, lo, hi, a, &factor)) return false;
  write_tile<G, kNanToZero>(x, out, total, mean, factor);
  return true;
}

template <int G, bool kNanToZero>
MEDIX_V512 bool gather_tile(const GroupAdvParams& p, const float* x, float* out, float* total, int64_t g0,
                            const TileAffine& a) {
  const __m512i base = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(G));
  __m512 m[G];
  __m512 sum = _mm512_setzero_ps(), lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < G; ++j) {
    m[j] = gather<kNanToZero>(base, x + j);
    sum = _mm512_add_ps(sum, m[j]);
    lo = _mm512_min_ps(lo, m[j]);
    hi = _mm512_max_ps(hi, m[j]);
  }
  const __m512 mean = _mm512_mul_ps(sum, _mm512_set1_ps(1.f / float(G)));
  __m512 ss = _mm512_setzero_ps();
  for (int j = 0; j < G; ++j) {
    const __m512 d = _mm512_sub_ps(m[j], mean);
    ss = _mm512_fmadd_ps(d, d, ss);
  }
  __m512 factor;
  if (!finish_stats(p, g0, G, mean, ss, lo, hi, a, &factor)) return false;
  write_tile<G, kNanToZero>(x, out, total, mean, factor);
  return true;
}

// Plain fp32 rewards (contiguous) in fixed groups of G: whole tiles vectorised, the rest scalar.
template <int G>
MEDIX_V512 void fixed_range(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  const float* x = static_cast<const float*>(p.values);
  float* out = static_cast<float*>(p.adv);
  const TileAffine a = tile_affine(p, G, batch_std);
  int64_t g = gb;
  if constexpr (kTreeSize<G>) {
    const __m512i order = _mm512_load_si512(tile_order<G>().order);
    for (; g + 16 <= ge; g += 16) {
      const int64_t o = g * G;
      float* tot = p.total ? p.total + o : nullptr;
      const bool ok = p.nan_to_zero ? tree_tile<G, true>(p, x + o, out + o, tot, g, a, order)
                                    : tree_tile<G, false>(p, x + o, out + o, tot, g, a, order);
      if (!ok) general_groups<float, float>(p, g, g + 16, batch_std);
    }
  } else {
    for (; g + 16 <= ge; g += 16) {
      const int64_t o = g * G;
      float* tot = p.total ? p.total + o : nullptr;
      const bool ok = p.nan_to_zero ? gather_tile<G, true>(p, x + o, out + o, tot, g, a)
                                    : gather_tile<G, false>(p, x + o, out + o, tot, g, a);
      if (!ok) general_groups<float, float>(p, g, g + 16, batch_std);
    }
  }
  if (g < ge) general_groups<float, float>(p, g, ge, batch_std);
}

// Ragged groups of plain fp32 rewards: a group of 2..16 is one masked vector (sum, min, max and
// the squared deviations are in-register reductions, the advantages one masked store); other
// groups (singletons, empty, larger, non-finite) go through the scalar kernel.
MEDIX_V512 void ragged_range(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  const float* x = static_cast<const float*>(p.values);
  float* out = static_cast<float*>(p.adv);
  const __m512 inf = _mm512_set1_ps(INFINITY), ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t g = gb; g < ge; ++g) {
    const int64_t b = p.offsets[g], c = p.offsets[g + 1] - b;
    if (c < 2 || c > 16) { general_groups<float, float>(p, g, g + 1, batch_std); continue; }
    const __mmask16 m = __mmask16((1u << c) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(m, x + b);
    if (p.nan_to_zero)
      v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_EQ_OQ), v);
    const float mean = _mm512_reduce_add_ps(v) / float(c);
    if (!is_finite(mean)) { general_groups<float, float>(p, g, g + 1, batch_std); continue; }
    const float lo = _mm512_reduce_min_ps(_mm512_mask_blend_ps(m, inf, v));
    const float hi = _mm512_reduce_max_ps(_mm512_mask_blend_ps(m, ninf, v));
    const __m512 d = _mm512_maskz_sub_ps(m, v, _mm512_set1_ps(mean));
    const float ss = _mm512_reduce_add_ps(_mm512_mul_ps(d, d));
    if (!is_finite(ss)) { general_groups<float, float>(p, g, g + 1, batch_std); continue; }  // fp32 overflow
    const float std = std::sqrt(ss / float(c - 1));
    const bool deg = lo == hi;
    if (p.group_mean) p.group_mean[g] = mean;
    if (p.group_std) p.group_std[g] = std;
    if (p.degenerate) p.degenerate[g] = deg;
    const GroupAffine a = group_affine<float>(mean, std, c, deg, batch_std, p);
    _mm512_mask_storeu_ps(out + b, m, _mm512_mul_ps(_mm512_sub_ps(v, _mm512_set1_ps(a.shift)), _mm512_set1_ps(a.factor)));
    if (p.total) _mm512_mask_storeu_ps(p.total + b, m, v);
  }
}

// Plain fp32 rewards: the vector kernel for the supported sizes; false: not handled.
MEDIX_V512 bool fixed_float(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
  if (p.k != 1 || p.weights || p.stride_n != 1) return false;
  if (p.offsets) {
    ragged_range(p, gb, ge, batch_std);
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
    case 32: fixed_range<32>(p, gb, ge, batch_std); return true;
    case 48: fixed_range<48>(p, gb, ge, batch_std); return true;
    case 64: fixed_range<64>(p, gb, ge, batch_std); return true;
    default: return false;
  }
}

// Totals of fp32 rows [i0, i1) with K = 4 contiguous components (MediX-R1's four), 16 rows per
// step: 4 contiguous loads, a 4 x 4 transpose inside each 128-bit lane (component j of 16 rows
// in one vector, rows permuted), the weighted sum in double in the order row_total uses (so the
// fp32 totals are bit-identical to the scalar kernels'), one permute back to row order.
MEDIX_V512 void totals_k4(const GroupAdvParams& p_in, int64_t i0, int64_t i1) {
  const GroupAdvParams p = p_in;
  const float* x = static_cast<const float*>(p.values);
  // element e of the transposed vectors is row 4 (e % 4) + e / 4; lane r of the result takes it
  const __m512i back = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512d w[4];
  for (int j = 0; j < 4; ++j) w[j] = _mm512_set1_pd(double(p.weights[j]));
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    const float* b = x + i * 4;
    __m512 v[4];
    for (int r = 0; r < 4; ++r) v[r] = p.nan_to_zero ? load<true>(b + 16 * r) : load<false>(b + 16 * r);
    const __m512 t0 = _mm512_unpacklo_ps(v[0], v[1]), t1 = _mm512_unpackhi_ps(v[0], v[1]);
    const __m512 t2 = _mm512_unpacklo_ps(v[2], v[3]), t3 = _mm512_unpackhi_ps(v[2], v[3]);
    __m512 c[4];
    c[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    c[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    c[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    c[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (int j = 0; j < 4; ++j) {  // acc += w_j * x_j, the product exact in double
      lo = _mm512_add_pd(lo, _mm512_mul_pd(w[j], _mm512_cvtps_pd(_mm512_castps512_ps256(c[j]))));
      hi = _mm512_add_pd(hi, _mm512_mul_pd(w[j], _mm512_cvtps_pd(_mm512_extractf32x8_ps(c[j], 1))));
    }
    const __m512 t = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
    _mm512_storeu_ps(p.total + i, _mm512_permutexvar_ps(back, t));
  }
  for (; i < i1; ++i) p.total[i] = row_total<float>(p, i);
}

// The AVX-512 kernels as group_range_with (group_advantages.h) uses them: calls
// per block of groups, not inlined (a target-less template cannot inline target code).
struct Kernels {
  template <typename T>
  static MEDIX_TARGET_AVX512 void totals(const GroupAdvParams& p, int64_t i0, int64_t i1) {
    if (std::is_same<T, float>::value && p.k == 4 && p.stride_n == 4 && p.stride_k == 1) totals_k4(p, i0, i1);
    else for (int64_t i = i0; i < i1; ++i) p.total[i] = row_total<T>(p, i);
  }
  static MEDIX_TARGET_AVX512 bool float_groups(const GroupAdvParams& p, int64_t gb, int64_t ge, double batch_std) {
    return fixed_float(p, gb, ge, batch_std);
  }
};

#undef MEDIX_V512

}  // namespace avx512
}  // namespace cpu
}  // namespace medix
#pragma GCC diagnostic pop
#endif
