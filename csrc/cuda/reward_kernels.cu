// CUDA kernels for group advantages and cosine rewards (torch-free; glue in
// csrc/torch/cuda_reward_ops.cpp). Formulas shared with the CPU kernels: common/reward_math.h.
//
// Group advantages: a team of LANES threads (a power of two <= 32, sized to the group) owns one
// group: it walks the members three times (sum/min/max, squared deviations, write), reducing
// with warp shuffles inside the team. Totals (sum_k w_k v_k) are recomputed per pass instead of
// staged in shared memory: K is small and the re-reads hit L1/L2. One launch for group scaling.
#include <cstdint>

#include "../common/reward_math.h"
#include "reward_kernels.cuh"

namespace medix {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ float load_total(const GroupAdvParams& p, int64_t i) {
  const T* v = static_cast<const T*>(p.values) + i * p.stride_n;
  if (p.k == 1 && !p.weights) {  // plain rewards: one load
    float x = to_float(v[0]);
    return (p.nan_to_zero && !is_finite(x)) ? 0.f : x;
  }
  float acc = 0.f;
  for (int64_t j = 0; j < p.k; ++j) {
    float x = to_float(v[j * p.stride_k]);
    if (p.nan_to_zero && !is_finite(x)) x = 0.f;
    acc += (p.weights ? p.weights[j] : 1.f) * x;
  }
  return acc;
}

template <int LANES, typename F>
__device__ __forceinline__ F team_sum(F x) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o, LANES);
  return x;
}
template <int LANES>
__device__ __forceinline__ float team_min(float x) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o /= 2) x = fminf(x, __shfl_xor_sync(0xffffffffu, x, o, LANES));
  return x;
}
template <int LANES>
__device__ __forceinline__ float team_max(float x) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o, LANES));
  return x;
}

// The redo of a team's group in double when its fp32 sum or sum of squared deviations is not
// finite (rewards near 3e38, spreads above ~1e19), as the float64 reference computes it. Every
// team of the warp that needs it takes this path together (the shuffles need the whole warp).
template <typename T, int LANES>
__device__ __noinline__ void group_in_double(const GroupAdvParams& p, int64_t team, bool live, int64_t b, int64_t e,
                                             int lane, bool degenerate, double batch_std) {
  const int64_t count = e - b;
  double s = 0.0;
  for (int64_t i = b + lane; i < e; i += LANES) s += double(load_total<T>(p, i));
  s = team_sum<LANES>(s);
  const double mean = count > 0 ? s / double(count) : 0.0;
  double ss = 0.0;
  for (int64_t i = b + lane; i < e; i += LANES) {
    const double d = double(load_total<T>(p, i)) - mean;
    ss += d * d;
  }
  ss = team_sum<LANES>(ss);
  if (!live) return;
  const double std = count > 1 ? sqrt(ss / double(count - 1)) : 0.0;
  if (lane == 0) {
    if (p.group_mean) p.group_mean[team] = float(mean);
    if (p.group_std) p.group_std[team] = float(std);
    if (p.degenerate) p.degenerate[team] = degenerate;
  }
  const GroupAffineT<double> a = group_affine<double>(mean, std, count, degenerate, batch_std, p);
  T* adv = static_cast<T*>(p.adv);
  for (int64_t i = b + lane; i < e; i += LANES) {
    const float r = load_total<T>(p, i);
    if (p.total) p.total[i] = r;
    adv[i] = from_float<T>(float((double(r) - a.shift) * a.factor));
  }
}

template <typename T, int LANES>
__global__ void group_advantages_kernel(const GroupAdvParams p, const double* __restrict__ batch_std_ptr) {
  const int64_t team = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / LANES;
  const int lane = threadIdx.x % LANES;
  // Every lane of a warp must reach the shuffles: teams past the end work on an empty group.
  const bool live = team < p.num_groups;
  int64_t b = 0, e = 0;
  if (live) {
    if (p.offsets) { b = p.offsets[team]; e = p.offsets[team + 1]; }
    else { b = team * p.group_size; e = b + p.group_size; }
    b = b < 0 ? 0 : (b > p.n ? p.n : b);  // never read outside [0, n), whatever the offsets say
    e = e < b ? b : (e > p.n ? p.n : e);
  }
  const int64_t count = e - b;

  float s = 0.f, lo = INFINITY, hi = -INFINITY;
  for (int64_t i = b + lane; i < e; i += LANES) {
    float r = load_total<T>(p, i);
    s += r; lo = fminf(lo, r); hi = fmaxf(hi, r);
  }
  s = team_sum<LANES>(s); lo = team_min<LANES>(lo); hi = team_max<LANES>(hi);
  const float mean = count > 0 ? s / float(count) : 0.f;
  float ss = 0.f;
  for (int64_t i = b + lane; i < e; i += LANES) {
    float d = load_total<T>(p, i) - mean;
    ss += d * d;
  }
  ss = team_sum<LANES>(ss);
  const bool degenerate = count > 0 && lo == hi;
  const double batch_std = batch_std_ptr ? *batch_std_ptr : 0.0;
  if (__any_sync(0xffffffffu, live && !(is_finite(s) && is_finite(ss)))) {  // warp-uniform branch
    group_in_double<T, LANES>(p, team, live, b, e, lane, degenerate, batch_std);
    return;
  }
  if (!live) return;
  const float std = count > 1 ? sqrtf(ss / float(count - 1)) : 0.f;
  if (lane == 0) {
    if (p.group_mean) p.group_mean[team] = mean;
    if (p.group_std) p.group_std[team] = std;
    if (p.degenerate) p.degenerate[team] = degenerate;
  }
  const GroupAffine a = group_affine<float>(mean, std, count, degenerate, batch_std, p);
  T* adv = static_cast<T*>(p.adv);
  for (int64_t i = b + lane; i < e; i += LANES) {
    float r = load_total<T>(p, i);
    if (p.total) p.total[i] = r;
    adv[i] = from_float<T>((r - a.shift) * a.factor);
  }
}

// Batch std of all totals (scale == batch): one block, two passes in double, kept in double.
template <typename T>
__global__ void batch_std_kernel(const GroupAdvParams p, double* out) {
  __shared__ double red[32];
  auto block_sum = [&](double v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    double t = 0;
    if (threadIdx.x < 32) {
      t = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0;
      for (int o = 16; o > 0; o /= 2) t += __shfl_xor_sync(0xffffffffu, t, o);
      if (threadIdx.x == 0) red[0] = t;
    }
    __syncthreads();
    t = red[0];
    __syncthreads();
    return t;
  };
  double s = 0;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) s += load_total<T>(p, i);
  const double mean = block_sum(s) / double(p.n);
  double ss = 0;
  for (int64_t i = threadIdx.x; i < p.n; i += blockDim.x) { double d = load_total<T>(p, i) - mean; ss += d * d; }
  ss = block_sum(ss);
  if (threadIdx.x == 0) *out = p.n > 1 ? sqrt(ss / double(p.n - 1)) : 0.0;
}

template <typename T, int LANES>
cudaError_t launch_groups(const GroupAdvParams& p, const double* batch_std, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t threads = p.num_groups * LANES;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  group_advantages_kernel<T, LANES><<<unsigned(blocks), kThreads, 0, stream>>>(p, batch_std);
  return cudaGetLastError();
}

template <typename T>
cudaError_t group_advantages_typed(const GroupAdvParams& p, double* batch_scratch, cudaStream_t stream) {
  if (p.num_groups == 0) return cudaSuccess;
  const double* batch_std = nullptr;
  if (p.scale == int(AdvScale::kBatch)) {
    batch_std_kernel<T><<<1, 1024, 0, stream>>>(p, batch_scratch);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    batch_std = batch_scratch;
  }
  // Team width: the group size rounded up to a power of two (fixed groups), a warp otherwise.
  const int64_t gs = p.offsets ? 32 : p.group_size;
  if (gs <= 2) return launch_groups<T, 2>(p, batch_std, stream);
  if (gs <= 4) return launch_groups<T, 4>(p, batch_std, stream);
  if (gs <= 8) return launch_groups<T, 8>(p, batch_std, stream);
  if (gs <= 16) return launch_groups<T, 16>(p, batch_std, stream);
  return launch_groups<T, 32>(p, batch_std, stream);
}

// f(x_j, y_j) for every column j of one row pair, a warp's 32 lanes striding over it. Rows that
// both start 16-byte aligned (the usual case: contiguous rows with D * sizeof(T) a multiple of
// 16) are read as 16-byte vectors (8 bf16 / fp16 or 4 fp32 per load, streamed: read once); the
// columns past the last full vector, and misaligned rows, one element at a time.
template <typename T, typename F>
__device__ __forceinline__ void for_each_pair(const T* x, const T* y, int64_t d, int lane, F&& f) {
  constexpr int kN = 16 / int(sizeof(T));
  int64_t j0 = 0;
  if (((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y)) & 15u) == 0) {
    const int64_t nvec = d / kN;
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    const uint4* yv = reinterpret_cast<const uint4*>(y);
    for (int64_t i = lane; i < nvec; i += 32) {
      const uint4 a = __ldcs(xv + i), b = __ldcs(yv + i);
      const T* ta = reinterpret_cast<const T*>(&a);
      const T* tb = reinterpret_cast<const T*>(&b);
#pragma unroll
      for (int k = 0; k < kN; ++k) f(to_float(ta[k]), to_float(tb[k]));
    }
    j0 = nvec * kN;
  }
  for (int64_t j = j0 + lane; j < d; j += 32) f(to_float(x[j]), to_float(y[j]));
}

template <typename T>
__global__ void cosine_kernel(const CosineParams p) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const bool live = row < p.b;
  const T* x = static_cast<const T*>(p.x) + (live ? row * p.x_stride : 0);
  const T* y = static_cast<const T*>(p.y) + (live ? row * p.y_stride : 0);
  const int64_t d = live ? p.d : 0;  // a warp past the last row reads nothing but joins the shuffles
  float dot = 0.f, xx = 0.f, yy = 0.f;
  for_each_pair(x, y, d, lane, [&](float a, float c) { dot += a * c; xx += a * a; yy += c * c; });
  dot = team_sum<32>(dot); xx = team_sum<32>(xx); yy = team_sum<32>(yy);
  float sx = 1.f, sy = 1.f;
  if (cosine_sums_overflow(dot, xx, yy)) {  // one row per warp: a warp-uniform branch
    // Huge entries (near 1e19 and above): redo with each vector divided by its largest magnitude.
    float mx = 0.f, my = 0.f;
    for_each_pair(x, y, d, lane, [&](float a, float c) { mx = fmaxf(mx, fabsf(a)); my = fmaxf(my, fabsf(c)); });
    sx = cosine_row_scale(team_max<32>(mx));
    sy = cosine_row_scale(team_max<32>(my));
    dot = 0.f; xx = 0.f; yy = 0.f;
    for_each_pair(x, y, d, lane, [&](float a, float c) {
      a /= sx; c /= sy;
      dot += a * c; xx += a * a; yy += c * c;
    });
    dot = team_sum<32>(dot); xx = team_sum<32>(xx); yy = team_sum<32>(yy);
  }
  if (live && lane == 0) p.out[row] = cosine_from_sums(dot, xx, yy, p, sx, sy);
}

template <typename T>
cudaError_t cosine_typed(const CosineParams& p, cudaStream_t stream) {
  if (p.b == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (p.b * 32 + kThreads - 1) / kThreads;
  cosine_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t group_advantages(const GroupAdvParams& p, DType dtype, double* batch_scratch, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return group_advantages_typed<float>(p, batch_scratch, stream);
    case DType::kBFloat16: return group_advantages_typed<bf16>(p, batch_scratch, stream);
    case DType::kFloat16: return group_advantages_typed<f16>(p, batch_scratch, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t cosine_rewards(const CosineParams& p, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return cosine_typed<float>(p, stream);
    case DType::kBFloat16: return cosine_typed<bf16>(p, stream);
    case DType::kFloat16: return cosine_typed<f16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace medix
