// Torch-free scalar types shared by the CPU and CUDA kernels.
//
// The kernels take raw pointers; 16-bit floats travel as their bit patterns (uint16_t) so that
// neither side needs c10 or cuda_bf16.h in its interface. Conversions round to nearest even,
// like torch's.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MEDIX_HD __host__ __device__ __forceinline__
#else
#define MEDIX_HD inline
#endif

namespace medix {

// Storage type tags, in the order the torch glue maps dtypes to them.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

MEDIX_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}
MEDIX_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}

MEDIX_HD float to_float(float x) { return x; }
MEDIX_HD float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
MEDIX_HD float to_float(f16 h) {
  // IEEE half -> float, including subnormals, inf and NaN.
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

template <typename T> MEDIX_HD T from_float(float x);
template <> MEDIX_HD float from_float<float>(float x) { return x; }
template <> MEDIX_HD bf16 from_float<bf16>(float x) {
  uint32_t u = float_to_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return bf16{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{uint16_t(u >> 16)};
}
template <> MEDIX_HD f16 from_float<f16>(float x) {
  uint32_t u = float_to_bits(x);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return f16{uint16_t(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u))};
  if (a >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // overflow -> inf
  if (a < 0x38800000u) {  // subnormal or zero in half
    float f = bits_to_float(a) * 16777216.0f;  // scale by 2^24, round to integer (RNE)
    uint32_t m = uint32_t(f);
    float rem = f - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return f16{uint16_t(sign | m)};
  }
  uint32_t r = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent, round to nearest even
  return f16{uint16_t(sign | (r >> 13))};
}

MEDIX_HD bool is_finite(float x) {
  return (float_to_bits(x) & 0x7f800000u) != 0x7f800000u;
}

}  // namespace medix
