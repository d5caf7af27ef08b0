// Run-time ISA selection shared by the CPU kernels, torch-free.
//
// Hot loops are compiled several times (AVX-512, AVX2+FMA, baseline x86-64) as separate
// functions with GCC target attributes, and the widest one the CPU supports is picked at run
// time, so one build runs everywhere and uses the vectors the machine has.
#pragma once
#include <cmath>
#include <cstdlib>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MEDIX_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MEDIX_HAS_ISA_VARIANTS 1
#define MEDIX_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,prefer-vector-width=512")))
#define MEDIX_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define MEDIX_HAS_ISA_VARIANTS 0
#endif

namespace medix {
namespace cpu {

#if MEDIX_HAS_ISA_VARIANTS
// 2: AVX-512 (f, bw, vl, dq), 1: AVX2 + FMA + F16C (every AVX2 CPU has the last two), 0: baseline
// x86-64. MEDIX_CPU_LEVEL=0/1/2 in the environment caps it (to test and measure the narrower
// variants on a wide machine).
inline int cpu_level() {
  static const int level = [] {
    int l = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512dq")
                ? 2
            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") ? 1
                                                                                                            : 0;
    if (const char* cap = std::getenv("MEDIX_CPU_LEVEL")) {
      if (cap[0] >= '0' && cap[0] <= '2' && cap[1] == 0 && cap[0] - '0' < l) l = cap[0] - '0';
    }
    return l;
  }();
  return level;
}
#else
inline int cpu_level() { return 0; }
#endif

// x[i] = sqrt(x[i]) for n floats, n a multiple of 4. std::sqrt must set errno on a negative
// argument, which keeps GCC from vectorising it; SSE's sqrtps (any x86-64) does not.
inline __attribute__((always_inline)) void sqrt_in_place(float* x, int n) {
#if defined(__SSE2__)
  for (int i = 0; i < n; i += 4) _mm_storeu_ps(x + i, _mm_sqrt_ps(_mm_loadu_ps(x + i)));
#else
  for (int i = 0; i < n; ++i) x[i] = std::sqrt(x[i]);
#endif
}

}  // namespace cpu
}  // namespace medix
