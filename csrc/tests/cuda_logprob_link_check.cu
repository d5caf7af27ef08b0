// Links the fused log-prob launchers (and the reward launchers) into one program: a compile and
// link check for machines without a GPU. With the argument `run` (on a GPU) it also runs the
// kernels on a few rows, bf16 and fp32, misaligned rows included, and compares them with a
// double-precision host reference, in place backward included.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "../common/dtypes.h"
#include "../cuda/logprob.cuh"
#include "../cuda/reward_kernels.cuh"

#define CHECK(expr)                                                                  \
  do {                                                                               \
    const cudaError_t e_ = (expr);                                                   \
    if (e_ != cudaSuccess) {                                                         \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      return 1;                                                                      \
    }                                                                                \
  } while (0)

namespace {

struct Ref { double logp, lse, ent; std::vector<double> grad; };

// Host reference of one row (x already rounded to the storage type), upstream grads g_lp, g_h.
Ref reference(const std::vector<float>& x, int64_t id, double temp, double g_lp, double g_h) {
  const size_t v = x.size();
  double m = -INFINITY;
  for (float xi : x) m = std::fmax(m, xi / temp);
  double s = 0, pz = 0;
  for (float xi : x) s += std::exp(xi / temp - m);
  Ref r;
  r.lse = m + std::log(s);
  for (float xi : x) pz += std::exp(xi / temp - r.lse) * (xi / temp);
  r.ent = r.lse - pz;
  r.logp = x[id] / temp - r.lse;
  r.grad.resize(v);
  for (size_t j = 0; j < v; ++j) {
    const double z = x[j] / temp, p = std::exp(z - r.lse);
    r.grad[j] = (g_lp * ((int64_t(j) == id ? 1.0 : 0.0) - p) - g_h * p * (z - r.lse + r.ent)) / temp;
  }
  return r;
}

template <typename T>
int run_case(medix::DType dtype, int64_t rows, int64_t v, int64_t stride, int64_t offset, float temp) {
  // Host data: row r occupies [offset + r * stride, offset + r * stride + v).
  const int64_t n = offset + rows * stride;
  std::vector<T> host(n, medix::from_float<T>(0.f));
  std::vector<std::vector<float>> xs(rows, std::vector<float>(v));
  std::vector<int64_t> ids(rows);
  uint32_t seed = 12345u;
  auto rnd = [&]() { seed = seed * 1664525u + 1013904223u; return float(seed >> 8) / 16777216.f; };
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < v; ++j) {
      T q = medix::from_float<T>(8.f * rnd() - 4.f);
      host[offset + r * stride + j] = q;
      xs[r][j] = medix::to_float(q);
    }
    ids[r] = int64_t(rnd() * float(v)) % v;
  }
  T* d_x = nullptr; int64_t* d_ids = nullptr; float* d_f = nullptr;
  CHECK(cudaMalloc(&d_x, n * sizeof(T)));
  CHECK(cudaMalloc(&d_ids, rows * sizeof(int64_t)));
  CHECK(cudaMalloc(&d_f, 5 * rows * sizeof(float)));
  CHECK(cudaMemcpy(d_x, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_ids, ids.data(), rows * sizeof(int64_t), cudaMemcpyHostToDevice));
  std::vector<float> ones(2 * rows, 1.f);
  float *logp = d_f, *lse = d_f + rows, *ent = d_f + 2 * rows, *g = d_f + 3 * rows;
  CHECK(cudaMemcpy(g, ones.data(), 2 * rows * sizeof(float), cudaMemcpyHostToDevice));
  medix::LogprobParams p;
  p.logits = d_x + offset; p.dtype = dtype; p.ids = d_ids; p.T = rows; p.V = v; p.row_stride = stride;
  p.temperature = temp; p.logp = logp; p.lse = lse; p.entropy = ent;
  CHECK(medix::cuda::logprob_fwd(p, nullptr));
  p.grad_logp = g; p.grad_entropy = g + rows;
  p.grad_logits = d_x + offset; p.grad_row_stride = stride;  // in place
  CHECK(medix::cuda::logprob_bwd(p, nullptr));
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out(3 * rows);
  std::vector<T> grad(n);
  CHECK(cudaMemcpy(out.data(), d_f, 3 * rows * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(grad.data(), d_x, n * sizeof(T), cudaMemcpyDeviceToHost));
  CHECK(cudaFree(d_x)); CHECK(cudaFree(d_ids)); CHECK(cudaFree(d_f));
  const double gtol = dtype == medix::DType::kFloat32 ? 1e-5 : 1e-2;
  double worst = 0, worst_g = 0;
  for (int64_t r = 0; r < rows; ++r) {
    Ref ref = reference(xs[r], ids[r], temp, 1.0, 1.0);
    worst = std::fmax(worst, std::fabs(out[r] - ref.logp));
    worst = std::fmax(worst, std::fabs(out[rows + r] - ref.lse));
    worst = std::fmax(worst, std::fabs(out[2 * rows + r] - ref.ent));
    for (int64_t j = 0; j < v; ++j)
      worst_g = std::fmax(worst_g, std::fabs(medix::to_float(grad[offset + r * stride + j]) - ref.grad[j]) /
                                       (gtol + std::fabs(ref.grad[j])));
  }
  const bool ok = worst < 2e-4 && worst_g < 2.0;
  std::printf("dtype %d rows %lld V %lld stride %lld offset %lld: max |fwd err| %.2e, max grad err/tol %.2f %s\n",
              int(dtype), (long long)rows, (long long)v, (long long)stride, (long long)offset, worst, worst_g,
              ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "run") != 0) {
    // Reference every launcher so the link step has to resolve them.
    void* launchers[] = {reinterpret_cast<void*>(&medix::cuda::logprob_fwd),
                         reinterpret_cast<void*>(&medix::cuda::logprob_bwd),
                         reinterpret_cast<void*>(&medix::cuda::group_advantages),
                         reinterpret_cast<void*>(&medix::cuda::cosine_rewards)};
    int linked = 0;
    for (void* f : launchers) linked += f != nullptr;
    std::printf("linked: medix::cuda::logprob_fwd, logprob_bwd (%d launchers in all)\n", linked);
    return 0;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no usable GPU: nothing run\n");
    return 1;
  }
  int failures = 0;
  failures += run_case<float>(medix::DType::kFloat32, 5, 1000, 1000, 0, 1.f);
  failures += run_case<float>(medix::DType::kFloat32, 3, 4099, 4103, 1, 0.7f);     // misaligned rows, odd V
  failures += run_case<medix::bf16>(medix::DType::kBFloat16, 4, 7, 7, 0, 1.f);      // V below one vector
  failures += run_case<medix::bf16>(medix::DType::kBFloat16, 3, 152064, 152064, 0, 1.f);
  failures += run_case<medix::bf16>(medix::DType::kBFloat16, 3, 1001, 1003, 3, 0.7f);  // misaligned
  failures += run_case<medix::f16>(medix::DType::kFloat16, 3, 4099, 4099, 0, 0.7f);
  std::printf(failures ? "logprob self-check FAILED\n" : "logprob self-check ok\n");
  return failures ? 1 : 0;
}
