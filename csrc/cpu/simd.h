// Vector traits for the CPU kernels written once for every vector width (logprob_vec.h): Vec8
// (AVX2 + FMA + F16C, 8 floats) and Vec16 (AVX-512, 16 floats). Each is a struct of static
// functions compiled for its ISA; a kernel template calls them as V::add(a, b) and is inlined
// into an entry function with the same target attribute and `flatten`: one straight body per
// ISA. (The traits are plain inline, not always_inline: GCC refuses always_inline target code in
// the target-less template's own body, while flattening the entry inlines them all.)
//
// Loads convert float32 / bfloat16 / float16 to float32 lanes, stores round back to the storage
// type (nearest even, as torch). `load_n` / `store_n` touch only the first n < W elements.
#pragma once
#include <cstdint>

#include "../common/dtypes.h"
#include "isa.h"

#if MEDIX_HAS_ISA_VARIANTS
#include <immintrin.h>

// The traits' vector arguments and returns are target-specific types used in target-less
// template code: GCC warns that the ABI of such functions differs without AVX, which does not
// matter here (every use is inlined into a function compiled for the ISA). GCC 12's own AVX-512
// headers trip -Wmaybe-uninitialized (their _mm512_undefined_*) once inlined. Both warnings are
// reported where the templates are instantiated, at the end of the file that includes this one,
// so they are switched off for the rest of that file.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace medix {
namespace cpu {

#define MEDIX_VEC8 static inline MEDIX_TARGET_AVX2
#define MEDIX_VEC16 static inline MEDIX_TARGET_AVX512

struct Vec8 {
  using F = __m256;
  using I = __m256i;
  static constexpr int W = 8;
  MEDIX_VEC8 F set1(float x) { return _mm256_set1_ps(x); }
  MEDIX_VEC8 F add(F a, F b) { return _mm256_add_ps(a, b); }
  MEDIX_VEC8 F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  MEDIX_VEC8 F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  MEDIX_VEC8 F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }    // a * b + c
  MEDIX_VEC8 F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
  MEDIX_VEC8 F max(F a, F b) { return _mm256_max_ps(a, b); }
  MEDIX_VEC8 F round(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for integral n in [-127, 127] (as floats): the exponent field built directly.
  MEDIX_VEC8 F pow2(F n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  MEDIX_VEC8 float reduce_add(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  MEDIX_VEC8 float reduce_max(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  MEDIX_VEC8 F load(const float* x) { return _mm256_loadu_ps(x); }
  MEDIX_VEC8 F load(const bf16* x) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  MEDIX_VEC8 F load(const f16* x) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))); }
  MEDIX_VEC8 void store(float* x, F v) { _mm256_storeu_ps(x, v); }
  MEDIX_VEC8 void store(bf16* x, F v) {
    // round to nearest even on the bits; NaN stays a (quiet) NaN
    const I u = _mm256_castps_si256(v);
    const I r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                                     _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
    const I nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const I b = _mm256_srli_epi32(_mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x), packed);
  }
  MEDIX_VEC8 void store(f16* x, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  template <typename T> MEDIX_VEC8 F load_n(const T* x, int n, float fill) {
    alignas(32) T buf[W];
    for (int i = 0; i < W; ++i) buf[i] = i < n ? x[i] : from_float<T>(fill);
    return load(buf);
  }
  template <typename T> MEDIX_VEC8 void store_n(T* x, F v, int n) {
    alignas(32) T buf[W];
    store(buf, v);
    for (int i = 0; i < n; ++i) x[i] = buf[i];
  }
};

struct Vec16 {
  using F = __m512;
  using I = __m512i;
  static constexpr int W = 16;
  MEDIX_VEC16 F set1(float x) { return _mm512_set1_ps(x); }
  MEDIX_VEC16 F add(F a, F b) { return _mm512_add_ps(a, b); }
  MEDIX_VEC16 F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  MEDIX_VEC16 F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  MEDIX_VEC16 F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  MEDIX_VEC16 F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  MEDIX_VEC16 F max(F a, F b) { return _mm512_max_ps(a, b); }
  MEDIX_VEC16 F round(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  MEDIX_VEC16 F pow2(F n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  MEDIX_VEC16 float reduce_add(F v) { return _mm512_reduce_add_ps(v); }
  MEDIX_VEC16 float reduce_max(F v) { return _mm512_reduce_max_ps(v); }
  MEDIX_VEC16 F load(const float* x) { return _mm512_loadu_ps(x); }
  MEDIX_VEC16 F load(const bf16* x) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  MEDIX_VEC16 F load(const f16* x) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))); }
  MEDIX_VEC16 void store(float* x, F v) { _mm512_storeu_ps(x, v); }
  MEDIX_VEC16 void store(bf16* x, F v) {
    const I u = _mm512_castps_si512(v);
    I r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                               _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
  MEDIX_VEC16 void store(f16* x, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  template <typename T> MEDIX_VEC16 F load_n(const T* x, int n, float fill) {
    alignas(64) T buf[W];
    for (int i = 0; i < W; ++i) buf[i] = i < n ? x[i] : from_float<T>(fill);
    return load(buf);
  }
  template <typename T> MEDIX_VEC16 void store_n(T* x, F v, int n) {
    alignas(64) T buf[W];
    store(buf, v);
    for (int i = 0; i < n; ++i) x[i] = buf[i];
  }
};

#undef MEDIX_VEC8
#undef MEDIX_VEC16

}  // namespace cpu
}  // namespace medix

#endif
