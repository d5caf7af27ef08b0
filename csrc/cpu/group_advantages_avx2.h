// AVX2 + FMA kernels of the group advantages (fp32 rewards in fixed and ragged groups, composite
// totals): the AVX-512 kernels' design (group_advantages_avx512.h) at 8 lanes. Included by
// group_advantages.h; every function here is compiled for AVX2 + FMA only (GCC target
// attributes) and is only called after cpu_level() reported it.
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
// factor with a permute. Ragged groups (any size >= 2), 8 at a time: a vector loop per group into
// one vector of partial statistics per group, reduced by the same tree.
// Composite totals (K = 4): 8 rows transposed in registers, the weighted sum in double in
// row_total's order, so the fp32 totals are bit-identical to every other kernel's.
// A tile or group whose mean or squared deviations are not finite (NaN / inf rewards, fp32
// overflow) is redone by general_groups, so those cases keep one semantics on every level.
#pragma once
#include <type_traits>

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
