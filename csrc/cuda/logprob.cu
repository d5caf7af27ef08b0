// CUDA kernels for fused per-token log-probs and entropy, forward and backward (torch-free; glue
// in csrc/torch/cuda_loss_ops.cpp). Semantics: csrc/common/logprob_params.h.
//
// Forward: one block per row (grid-stride over rows, 1-D grid, so any T up to 2^31 - 1 and more).
// Each thread walks its share of the row with 16-byte loads (4 floats or 8 bf16/f16; a scalar
// head up to the first 16-byte boundary and a scalar tail, so any V and any row alignment work),
// keeping an online triple (m = max z, s = sum exp(z - m), t = sum exp(z - m) * z) in fp32: one
// exp per element plus one per vector when the max grows. The triples are merged with warp
// shuffles, then across warps through shared memory; thread 0 writes lse = m + log s,
// logp = z[id] - lse and H = lse - t / s.
//
// Backward: one block per row, one pass; each element is loaded and its gradient stored by the
// same thread (no __restrict__, no non-coherent loads), so grad_logits may alias the logits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "logprob.cuh"

// Returns the error of a CUDA call from the enclosing launcher (no exceptions in torch-free code).
#define MEDIX_CUDA_CHECK(expr)                          \
  do {                                                  \
    const cudaError_t medix_err_ = (expr);              \
    if (medix_err_ != cudaSuccess) return medix_err_;   \
  } while (0)

namespace medix {
namespace cuda {
namespace {

constexpr int kMaxThreads = 512;
constexpr int64_t kMaxBlocks = INT_MAX;  // grid dimension x holds up to 2^31 - 1 blocks

// fp32 <-> storage type, one element or one 16-byte vector (uint4) of N elements at a time.
template <typename T> struct Elem;

template <> struct Elem<float> {
  static constexpr int N = 4;
  static __device__ __forceinline__ float load1(const float* p) { return *p; }
  static __device__ __forceinline__ void store1(float* p, float v) { *p = v; }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float* f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
};

template <> struct Elem<bf16> {
  static constexpr int N = 8;
  static __device__ __forceinline__ float lo(uint32_t w) { return __uint_as_float(w << 16); }
  static __device__ __forceinline__ float hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
  static __device__ __forceinline__ uint32_t bits(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));  // round to nearest even
  }
  static __device__ __forceinline__ float load1(const bf16* p) { return __uint_as_float(uint32_t(p->bits) << 16); }
  static __device__ __forceinline__ void store1(bf16* p, float v) { p->bits = uint16_t(bits(v)); }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    f[0] = lo(u.x); f[1] = hi(u.x); f[2] = lo(u.y); f[3] = hi(u.y);
    f[4] = lo(u.z); f[5] = hi(u.z); f[6] = lo(u.w); f[7] = hi(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float* f) {
    return make_uint4(bits(f[0]) | (bits(f[1]) << 16), bits(f[2]) | (bits(f[3]) << 16),
                      bits(f[4]) | (bits(f[5]) << 16), bits(f[6]) | (bits(f[7]) << 16));
  }
};

template <> struct Elem<f16> {
  static constexpr int N = 8;
  static __device__ __forceinline__ float lo(uint32_t w) { return __half2float(__ushort_as_half(uint16_t(w & 0xffffu))); }
  static __device__ __forceinline__ float hi(uint32_t w) { return __half2float(__ushort_as_half(uint16_t(w >> 16))); }
  static __device__ __forceinline__ uint32_t bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ float load1(const f16* p) { return __half2float(__ushort_as_half(p->bits)); }
  static __device__ __forceinline__ void store1(f16* p, float v) { p->bits = uint16_t(bits(v)); }
  static __device__ __forceinline__ void unpack(const uint4& u, float* f) {
    f[0] = lo(u.x); f[1] = hi(u.x); f[2] = lo(u.y); f[3] = hi(u.y);
    f[4] = lo(u.z); f[5] = hi(u.z); f[6] = lo(u.w); f[7] = hi(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float* f) {
    return make_uint4(bits(f[0]) | (bits(f[1]) << 16), bits(f[2]) | (bits(f[3]) << 16),
                      bits(f[4]) | (bits(f[5]) << 16), bits(f[6]) | (bits(f[7]) << 16));
  }
};

// Elements of a row before its first 16-byte boundary (all of them, V, if the row start is not
// even element-aligned, which torch never produces: then the row is handled one element at a time).
template <typename T>
__device__ __forceinline__ int64_t head_elems(const T* x, int64_t v) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(x);
  if (a % sizeof(T) != 0) return v;
  const int64_t h = int64_t((16u - (a & 15u)) & 15u) / int64_t(sizeof(T));
  return h < v ? h : v;
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Online softmax statistics of the z seen so far: m = max, s = sum exp(z - m), t = sum exp(z - m) z.
struct Online {
  float m, s, t;
};

template <bool ENT, int N>
__device__ __forceinline__ void absorb(Online& st, const float* z) {
  float mx = z[0];
#pragma unroll
  for (int k = 1; k < N; ++k) mx = fmaxf(mx, z[k]);
  if (mx > st.m) {  // rescale once per vector, not per element
    const float a = __expf(st.m - mx);  // 0 while st.m is still -inf
    st.s *= a;
    if (ENT) st.t *= a;
    st.m = mx;
  }
  // While every z seen is -inf, shift by 0 instead (exp(-inf - -inf) would be NaN).
  const float shift = st.m == -INFINITY ? 0.f : st.m;
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const float e = __expf(z[k] - shift);
    st.s += e;
    if (ENT) st.t += e > 0.f ? e * z[k] : 0.f;  // z = -inf contributes 0, not 0 * -inf
  }
}

__device__ __forceinline__ Online merge(const Online& a, const Online& b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return a;  // both empty so far: s = t = 0
  const float ca = __expf(a.m - m), cb = __expf(b.m - m);
  return Online{m, a.s * ca + b.s * cb, a.t * ca + b.t * cb};
}

template <bool ENT>
__device__ __forceinline__ Online warp_merge(Online st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Online other;
    other.m = __shfl_xor_sync(0xffffffffu, st.m, o);
    other.s = __shfl_xor_sync(0xffffffffu, st.s, o);
    other.t = ENT ? __shfl_xor_sync(0xffffffffu, st.t, o) : 0.f;
    st = merge(st, other);
  }
  return st;
}

// Merges every thread's triple; the result is valid in warp 0. blockDim.x: a multiple of 32.
template <bool ENT>
__device__ __forceinline__ Online block_merge(Online st, Online* smem) {
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
  st = warp_merge<ENT>(st);
  if (lane == 0) smem[warp] = st;
  __syncthreads();
  if (warp == 0) {
    const int warps = int(blockDim.x) >> 5;
    st = lane < warps ? smem[lane] : Online{-INFINITY, 0.f, 0.f};
    st = warp_merge<ENT>(st);
  }
  return st;
}

template <typename T, bool ENT>
__global__ void __launch_bounds__(kMaxThreads) logprob_fwd_kernel(const LogprobParams p) {
  using E = Elem<T>;
  __shared__ Online smem[32];
  const float inv_t = 1.f / p.temperature;
  const int64_t v = p.V;
  const int64_t step = blockDim.x;
  for (int64_t row = blockIdx.x; row < p.T; row += gridDim.x) {
    const T* x = static_cast<const T*>(p.logits) + row * p.row_stride;
    Online st{-INFINITY, 0.f, 0.f};
    const int64_t head = head_elems(x, v);
    const int64_t nvec = (v - head) / E::N;
    const uint4* xv = reinterpret_cast<const uint4*>(x + head);  // 16-byte aligned when nvec > 0
    for (int64_t j = threadIdx.x; j < head; j += step) {
      const float z = E::load1(x + j) * inv_t;
      absorb<ENT, 1>(st, &z);
    }
    int64_t i = threadIdx.x;
    for (; i + step < nvec; i += 2 * step) {  // two 16-byte loads in flight per thread
      const uint4 a = __ldcs(xv + i), b = __ldcs(xv + i + step);  // read once: evict first
      float z[E::N];
      E::unpack(a, z);
#pragma unroll
      for (int k = 0; k < E::N; ++k) z[k] *= inv_t;
      absorb<ENT, E::N>(st, z);
      E::unpack(b, z);
#pragma unroll
      for (int k = 0; k < E::N; ++k) z[k] *= inv_t;
      absorb<ENT, E::N>(st, z);
    }
    if (i < nvec) {  // at most one vector left for this thread
      float z[E::N];
      E::unpack(__ldcs(xv + i), z);
#pragma unroll
      for (int k = 0; k < E::N; ++k) z[k] *= inv_t;
      absorb<ENT, E::N>(st, z);
    }
    for (int64_t j = head + nvec * E::N + threadIdx.x; j < v; j += step) {
      const float z = E::load1(x + j) * inv_t;
      absorb<ENT, 1>(st, &z);
    }
    st = block_merge<ENT>(st, smem);
    if (threadIdx.x == 0) {
      const float lse = st.m + logf(st.s);
      const int64_t id = p.ids[row];
      // The glue checks ids; an id outside [0, V) still never reads outside the row (NaN).
      const float z_id = (id >= 0 && id < v) ? E::load1(x + id) * inv_t : NAN;
      p.logp[row] = z_id - lse;
      p.lse[row] = lse;
      if (ENT) p.entropy[row] = lse - st.t / st.s;
    }
    __syncthreads();  // smem is reused by this block's next row
  }
}

template <typename T, bool ENT>
__global__ void __launch_bounds__(kMaxThreads) logprob_bwd_kernel(const LogprobParams p) {
  using E = Elem<T>;
  const float inv_t = 1.f / p.temperature;
  const int64_t v = p.V;
  const int64_t step = blockDim.x;
  for (int64_t row = blockIdx.x; row < p.T; row += gridDim.x) {
    const T* x = static_cast<const T*>(p.logits) + row * p.row_stride;
    T* y = static_cast<T*>(p.grad_logits) + row * p.grad_row_stride;
    const float lse = p.lse[row], g_lp = p.grad_logp[row];
    const float ent = ENT ? p.entropy[row] : 0.f, g_ent = ENT ? p.grad_entropy[row] : 0.f;
    const int64_t id = p.ids[row];
    auto grad_of = [&](float xj, int64_t j) {
      const float z = xj * inv_t;
      const float pr = __expf(z - lse);
      float g = (j == id ? g_lp : 0.f) - g_lp * pr;
      if (ENT) g -= g_ent * pr * (pr > 0.f ? z - lse + ent : 0.f);  // p log p -> 0 as p -> 0
      return g * inv_t;
    };
    // Vectors only when input and output reach a 16-byte boundary at the same element.
    int64_t head = head_elems(x, v);
    if (head < v && !aligned16(y + head)) head = v;
    const int64_t nvec = (v - head) / E::N;
    const uint4* xv = reinterpret_cast<const uint4*>(x + head);
    uint4* yv = reinterpret_cast<uint4*>(y + head);
    for (int64_t j = threadIdx.x; j < head; j += step) E::store1(y + j, grad_of(E::load1(x + j), j));
    int64_t i = threadIdx.x;
    for (; i + step < nvec; i += 2 * step) {
      // Both loads before both stores; each thread only ever touches its own elements.
      const uint4 a = __ldcs(xv + i), b = __ldcs(xv + i + step);
      float f[E::N];
      E::unpack(a, f);
      const int64_t ja = head + i * E::N, jb = head + (i + step) * E::N;
#pragma unroll
      for (int k = 0; k < E::N; ++k) f[k] = grad_of(f[k], ja + k);
      __stcs(yv + i, E::pack(f));
      E::unpack(b, f);
#pragma unroll
      for (int k = 0; k < E::N; ++k) f[k] = grad_of(f[k], jb + k);
      __stcs(yv + i + step, E::pack(f));
    }
    if (i < nvec) {
      float f[E::N];
      E::unpack(__ldcs(xv + i), f);
      const int64_t ja = head + i * E::N;
#pragma unroll
      for (int k = 0; k < E::N; ++k) f[k] = grad_of(f[k], ja + k);
      __stcs(yv + i, E::pack(f));
    }
    for (int64_t j = head + nvec * E::N + threadIdx.x; j < v; j += step) E::store1(y + j, grad_of(E::load1(x + j), j));
  }
}

// Threads per block: enough for about two vectors per thread on short rows, kMaxThreads on long ones.
int threads_for(int64_t v, int vec) {
  const int64_t want = (v + 2 * vec - 1) / (2 * vec);
  int t = 32;
  while (t < want && t < kMaxThreads) t <<= 1;
  return t;
}

unsigned blocks_for(int64_t rows) { return unsigned(rows < kMaxBlocks ? rows : kMaxBlocks); }

template <typename T>
cudaError_t fwd_typed(const LogprobParams& p, cudaStream_t stream) {
  const int threads = threads_for(p.V, Elem<T>::N);
  if (p.entropy) {
    logprob_fwd_kernel<T, true><<<blocks_for(p.T), threads, 0, stream>>>(p);
  } else {
    logprob_fwd_kernel<T, false><<<blocks_for(p.T), threads, 0, stream>>>(p);
  }
  MEDIX_CUDA_CHECK(cudaGetLastError());
  return cudaSuccess;
}

template <typename T>
cudaError_t bwd_typed(const LogprobParams& p, cudaStream_t stream) {
  const int threads = threads_for(p.V, Elem<T>::N);
  if (p.grad_entropy) {
    logprob_bwd_kernel<T, true><<<blocks_for(p.T), threads, 0, stream>>>(p);
  } else {
    logprob_bwd_kernel<T, false><<<blocks_for(p.T), threads, 0, stream>>>(p);
  }
  MEDIX_CUDA_CHECK(cudaGetLastError());
  return cudaSuccess;
}

}  // namespace

cudaError_t logprob_fwd(const LogprobParams& p, cudaStream_t stream) {
  if (p.T < 0 || p.V < 1 || !(p.temperature > 0.f)) return cudaErrorInvalidValue;
  if (p.T == 0) return cudaSuccess;
  if (!p.logits || !p.ids || !p.logp || !p.lse) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: return fwd_typed<float>(p, stream);
    case DType::kBFloat16: return fwd_typed<bf16>(p, stream);
    case DType::kFloat16: return fwd_typed<f16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t logprob_bwd(const LogprobParams& p, cudaStream_t stream) {
  if (p.T < 0 || p.V < 1 || !(p.temperature > 0.f)) return cudaErrorInvalidValue;
  if (p.T == 0) return cudaSuccess;
  if (!p.logits || !p.ids || !p.lse || !p.grad_logp || !p.grad_logits) return cudaErrorInvalidValue;
  if (p.grad_entropy && !p.entropy) return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: return bwd_typed<float>(p, stream);
    case DType::kBFloat16: return bwd_typed<bf16>(p, stream);
    case DType::kFloat16: return bwd_typed<f16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace medix
