// AVX2 + FMA tiles of fixed groups (fp32 rewards), used by group_advantages_avx2.h: the AVX-512
// tile kernels' design (group_advantages_avx512.h) at 8 lanes. Every function here is compiled for
// AVX2 + FMA only (GCC target attributes) and is only called after cpu_level() reported it.
//
// A tile is 8 consecutive groups: 8 * G contiguous floats, i.e. G vectors of 8 lanes, and its
// statistics are vectors of 8 (one lane per group):
//  - G = 2, 4 and multiples of 8: a shuffle tree reduces the tile's vectors (each holding whole
//    groups, or a whole vector per group) to one vector of 8 per-group sums (min, max); the tree
//    leaves the groups in a fixed lane order, found once by running it on labels (tile_order) and
//    undone with one permute;
//  - other G up to 15: member j of the 8 groups is one gather (stride G).
// Then mean, unbiased std, the degenerate mask (min == max) and the affine factor are lane-wise
// (one sqrt and one division per 8 groups), and each output vector picks its groups' shift and
// factor with a permute. A tile whose mean or squared deviations are not finite (NaN / inf
// rewards, fp32 overflow) is redone by general_groups, so those cases keep one semantics on every
// level.
#pragma once
#include "isa.h"

#if MEDIX_HAS_ISA_VARIANTS
#include <immintrin.h>

namespace medix {
namespace cpu {
namespace avx2 {

#define MEDIX_V256 inline __attribute__((always_inline)) MEDIX_TARGET_AVX2

struct AddOp { MEDIX_V256 __m256 operator()(__m256 a, __m256 b) const { return _mm256_add_ps(a, b); } };
struct MinOp { MEDIX_V256 __m256 operator()(__m256 a, __m256 b) const { return _mm256_min_ps(a, b); } };
struct MaxOp { MEDIX_V256 __m256 operator()(__m256 a, __m256 b) const { return _mm256_max_ps(a, b); } };

// Tree levels: each combines two vectors whose lanes hold groups in blocks of 8, 4 or 2 lanes
// into one vector holding twice as many groups in blocks half as wide.
template <class Op> MEDIX_V256 __m256 level1(__m256 a, __m256 b, Op op) {
  return op(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
template <class Op> MEDIX_V256 __m256 level2(__m256 a, __m256 b, Op op) {
  return op(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
template <class Op> MEDIX_V256 __m256 level3(__m256 a, __m256 b, Op op) {
  return op(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// R vectors (8, 4 or 2, each holding 8 / R groups as above) -> one vector of 8 groups.
template <int R, class Op> MEDIX_V256 __m256 tree(__m256* v, Op op) {
  if constexpr (R >= 8) for (int i = 0; i < 4; ++i) v[i] = level1(v[2 * i], v[2 * i + 1], op);
  if constexpr (R >= 4) for (int i = 0; i < 2; ++i) v[i] = level2(v[2 * i], v[2 * i + 1], op);
  if constexpr (R >= 2) v[0] = level3(v[0], v[1], op);
  return v[0];
}

template <int G> constexpr bool kTreeSize = G == 2 || G == 4 || (G >= 8 && G % 8 == 0);
template <int G> constexpr int kTreeR = G < 8 ? G : 8;      // vectors entering the tree
template <int G> constexpr int kTreeM = G < 8 ? 1 : G / 8;  // vectors per tree input

// lane l of the in-order vector = lane order[l] of the tree's output
struct TileOrder { alignas(32) int32_t order[8]; bool ok; };

template <int G>
MEDIX_TARGET_AVX2 __attribute__((noinline)) TileOrder make_tile_order() {
  // Run the min tree on a tile whose group l holds the value l everywhere.
  constexpr int R = kTreeR<G>, M = kTreeM<G>;
  alignas(32) float x[8 * G];
  for (int i = 0; i < 8 * G; ++i) x[i] = float(i / G);
  __m256 v[R];
  for (int r = 0; r < R; ++r) {
    v[r] = _mm256_loadu_ps(x + r * M * 8);
    for (int i = 1; i < M; ++i) v[r] = _mm256_min_ps(v[r], _mm256_loadu_ps(x + (r * M + i) * 8));
  }
  alignas(32) float lanes[8];
  _mm256_storeu_ps(lanes, tree<R>(v, MinOp{}));
  TileOrder t{};
  t.ok = true;
  for (int l = 0; l < 8; ++l) {
    int found = -1;
    for (int q = 0; q < 8; ++q) if (lanes[q] == float(l)) { found = found < 0 ? q : -2; }
    if (found < 0) t.ok = false;
    t.order[l] = found < 0 ? 0 : found;
  }
  return t;
}

template <int G> inline const TileOrder& tile_order() {
  static const TileOrder t = make_tile_order<G>();
  return t;
}

// Whether every tree layout checks out (it must; if not, the portable kernels are used).
inline bool tile_orders_ok() {
  static const bool ok = tile_order<2>().ok && tile_order<4>().ok && tile_order<8>().ok && tile_order<16>().ok &&
                         tile_order<24>().ok && tile_order<32>().ok && tile_order<48>().ok && tile_order<64>().ok;
  return ok;
}

// idx[8 v + e] = (8 v + e) / G: the group (0..7) of lane e of the tile's vector v.
template <int G> struct LaneGroups {
  int32_t idx[8 * G];
  constexpr LaneGroups() : idx() { for (int i = 0; i < 8 * G; ++i) idx[i] = i / G; }
};
template <int G> inline constexpr LaneGroups<G> kLaneGroups{};

// Lanes with a finite value keep it, the others become 0 (finite <=> x - x == 0).
MEDIX_V256 __m256 finite_or_zero(__m256 v) {
  return _mm256_and_ps(v, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_EQ_OQ));
}
MEDIX_V256 bool all_finite(__m256 v) {
  return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_EQ_OQ)) == 0xFF;
}

template <bool kNanToZero> MEDIX_V256 __m256 load(const float* x) {
  const __m256 v = _mm256_loadu_ps(x);
  return kNanToZero ? finite_or_zero(v) : v;
}

template <bool kNanToZero> MEDIX_V256 __m256 gather(__m256i idx, const float* x) {
  const __m256 v = _mm256_i32gather_ps(x, idx, 4);
  return kNanToZero ? finite_or_zero(v) : v;
}

// The statistics of one tile (in-order lanes) -> stats outputs, factor; false if a mean or a
// sum of squared deviations is not finite: the caller redoes the tile with general_groups.
MEDIX_V256 bool finish_stats(const GroupAdvParams& p, int64_t g0, int G, __m256 mean, __m256 ss, __m256 lo, __m256 hi,
                             const TileAffine& a, __m256* factor) {
  if (!all_finite(mean) || !all_finite(ss)) return false;
  const __m256 stdv = _mm256_sqrt_ps(_mm256_mul_ps(ss, _mm256_set1_ps(1.f / float(G - 1))));
  const __m256 deg = _mm256_cmp_ps(lo, hi, _CMP_EQ_OQ);
  const __m256 f = a.by_std ? _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(stdv, _mm256_set1_ps(a.eps)))
                            : _mm256_set1_ps(a.constant);
  *factor = _mm256_andnot_ps(deg, f);
  if (p.group_mean) _mm256_storeu_ps(p.group_mean + g0, mean);
  if (p.group_std) _mm256_storeu_ps(p.group_std + g0, stdv);
  if (p.degenerate) {  // 8 lanes of 0 / -1 -> 8 bytes of 0 / 1
    const __m256i d = _mm256_castps_si256(deg);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
    const __m128i b = _mm_and_si128(_mm_packs_epi16(w, w), _mm_set1_epi8(1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p.degenerate + g0), b);
  }
  return true;
}

// out (and total, if asked) of one tile from in-order mean and factor.
template <int G, bool kNanToZero>
MEDIX_V256 void write_tile(const float* x, float* out, float* total, __m256 mean, __m256 factor) {
  const int32_t* idx = kLaneGroups<G>.idx;
  for (int v = 0; v < G; ++v) {
    const __m256 r = load<kNanToZero>(x + 8 * v);
    const __m256i iv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + 8 * v));
    const __m256 y = _mm256_mul_ps(_mm256_sub_ps(r, _mm256_permutevar8x32_ps(mean, iv)),
                                   _mm256_permutevar8x32_ps(factor, iv));
    _mm256_storeu_ps(out + 8 * v, y);
    if (total) _mm256_storeu_ps(total + 8 * v, r);
  }
}

// The tile's vectors r = 0..R-1 (each the op-combination of its M consecutive vectors) -> tree.
template <int G, bool kNanToZero, class Op>
MEDIX_V256 __m256 tile_reduce(const float* x, const __m256i order, Op op) {
  constexpr int R = kTreeR<G>, M = kTreeM<G>;
  __m256 v[R];
  for (int r = 0; r < R; ++r) {
    v[r] = load<kNanToZero>(x + r * M * 8);
    for (int i = 1; i < M; ++i) v[r] = op(v[r], load<kNanToZero>(x + (r * M + i) * 8));
  }
  return _mm256_permutevar8x32_ps(tree<R>(v, op), order);
}

template <int G, bool kNanToZero>
MEDIX_V256 bool tree_tile(const GroupAdvParams& p, const float* x, float* out, float* total, int64_t g0,
                          const TileAffine& a, const __m256i order) {
  constexpr int R = kTreeR<G>, M = kTreeM<G>;
  // Sums, then min, then max: one tree each (the tile, 8 * G floats, stays in L1 meanwhile).
  const __m256 mean = _mm256_mul_ps(tile_reduce<G, kNanToZero>(x, order, AddOp{}), _mm256_set1_ps(1.f / float(G)));
  const __m256 lo = tile_reduce<G, kNanToZero>(x, order, MinOp{});
  const __m256 hi = tile_reduce<G, kNanToZero>(x, order, MaxOp{});
  // Sum of squared deviations from each lane's own group mean.
  const int32_t* idx = kLaneGroups<G>.idx;
  __m256 v[R];
  for (int r = 0; r < R; ++r) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < M; ++i) {
      const int q = r * M + i;
      const __m256i iv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + 8 * q));
      const __m256 d = _mm256_sub_ps(load<kNanToZero>(x + q * 8), _mm256_permutevar8x32_ps(mean, iv));
      acc = _mm256_fmadd_ps(d, d, acc);
    }
    v[r] = acc;
  }
  const __m256 ss = _mm256_permutevar8x32_ps(tree<R>(v, AddOp{}), order);
  __m256 factor;
  if (!finish_stats(p, g0, G, mean, ss, lo, hi, a, &factor)) return false;
  write_tile<G, kNanToZero>(x, out, total, mean, factor);
  return true;
}

template <int G, bool kNanToZero>
MEDIX_V256 bool gather_tile(const GroupAdvParams& p, const float* x, float* out, float* total, int64_t g0,
                            const TileAffine& a) {
  const __m256i base = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(G));
  __m256 m[G];
  __m256 sum = _mm256_setzero_ps(), lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY);
  for (int j = 0; j < G; ++j) {
    m[j] = gather<kNanToZero>(base, x + j);
    sum = _mm256_add_ps(sum, m[j]);
    lo = _mm256_min_ps(lo, m[j]);
    hi = _mm256_max_ps(hi, m[j]);
  }
  const __m256 mean = _mm256_mul_ps(sum, _mm256_set1_ps(1.f / float(G)));
  __m256 ss = _mm256_setzero_ps();
  for (int j = 0; j < G; ++j) {
    const __m256 d = _mm256_sub_ps(m[j], mean);
    ss = _mm256_fmadd_ps(d, d, ss);
  }
  __m256 factor;
  if (!finish_stats(p, g0, G, mean, ss, lo, hi, a, &factor)) return false;
  write_tile<G, kNanToZero>(x, out, total, mean, factor);
  return true;
}

// Plain fp32 rewards (contiguous) in fixed groups of G: whole tiles vectorised, the rest (< 8
// groups) one group at a time.
template <int G>
MEDIX_V256 void fixed_range(const GroupAdvParams& p_in, int64_t gb, int64_t ge, double batch_std) {
  const GroupAdvParams p = p_in;
  const float* x = static_cast<const float*>(p.values);
  float* out = static_cast<float*>(p.adv);
  const TileAffine a = tile_affine(p, G, batch_std);
  int64_t g = gb;
  if constexpr (kTreeSize<G>) {
    const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile_order<G>().order));
    for (; g + 8 <= ge; g += 8) {
      const int64_t o = g * G;
      float* tot = p.total ? p.total + o : nullptr;
      const bool ok = p.nan_to_zero ? tree_tile<G, true>(p, x + o, out + o, tot, g, a, order)
                                    : tree_tile<G, false>(p, x + o, out + o, tot, g, a, order);
      if (!ok) general_groups<float, float>(p, g, g + 8, batch_std);
    }
  } else {
    for (; g + 8 <= ge; g += 8) {
      const int64_t o = g * G;
      float* tot = p.total ? p.total + o : nullptr;
      const bool ok = p.nan_to_zero ? gather_tile<G, true>(p, x + o, out + o, tot, g, a)
                                    : gather_tile<G, false>(p, x + o, out + o, tot, g, a);
      if (!ok) general_groups<float, float>(p, g, g + 8, batch_std);
    }
  }
  if (g < ge) general_groups<float, float>(p, g, ge, batch_std);
}

#undef MEDIX_V256

}  // namespace avx2
}  // namespace cpu
}  // namespace medix
#endif
