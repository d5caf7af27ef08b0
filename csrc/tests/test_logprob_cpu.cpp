// C++ unit tests of the torch-free CPU log-prob / entropy kernels against a double-precision
// reference (run by ctest; no framework, no torch).
#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <vector>

#include "../cpu/logprob.h"

namespace {

struct Serial {
  template <typename F> void operator()(int64_t b, int64_t e, int64_t, const F& f) const { if (b < e) f(b, e); }
};

int failures = 0;
const char* variant_name = "";  // the kernel variant being checked
void expect_near(double got, double want, double tol, const char* what, int64_t row) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s, %s (row %lld): got %.9g want %.9g\n", variant_name, what, (long long)row, got, want);
    ++failures;
  }
}

// The kernel variants the CPU can run, called directly (whatever MEDIX_CPU_LEVEL says).
using RangeFn = void (*)(const medix::LogprobParams&, int64_t, int64_t);
struct Variant { const char* name; RangeFn fwd, bwd; bool supported; };

std::vector<Variant> variants() {
  std::vector<Variant> v = {{"portable", medix::cpu::logprob_fwd_range_base<float>,
                             medix::cpu::logprob_bwd_range_base<float>, true}};
#if MEDIX_HAS_ISA_VARIANTS
  v.push_back({"avx2", medix::cpu::logprob_fwd_range_avx2<float>, medix::cpu::logprob_bwd_range_avx2<float>,
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")});
  v.push_back({"avx512", medix::cpu::logprob_fwd_range_avx512<float>, medix::cpu::logprob_bwd_range_avx512<float>,
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512dq")});
#endif
  return v;
}

void check(const Variant& k, int64_t T, int64_t V, float temperature, bool minus_inf_tail) {
  variant_name = k.name;
  std::mt19937 gen(unsigned(T * 131 + V));
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> x(size_t(T * V));
  for (auto& v : x) v = normal(gen);
  if (minus_inf_tail)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = V / 2; j < V; ++j) x[size_t(t * V + j)] = -INFINITY;
  std::vector<int64_t> ids{}; ids.resize(size_t(T));
  for (int64_t t = 0; t < T; ++t) ids[size_t(t)] = (t * 7919) % (minus_inf_tail ? std::max<int64_t>(1, V / 2) : V);
  std::vector<float> logp(static_cast<size_t>(T)), lse(static_cast<size_t>(T)), ent(static_cast<size_t>(T));
  medix::LogprobParams p;
  p.logits = x.data(); p.ids = ids.data(); p.T = T; p.V = V; p.row_stride = V; p.temperature = temperature;
  p.logp = logp.data(); p.lse = lse.data(); p.entropy = ent.data();
  k.fwd(p, 0, T);

  std::vector<float> glp(static_cast<size_t>(T)), gh(static_cast<size_t>(T)), grad(x.size());
  for (int64_t t = 0; t < T; ++t) { glp[size_t(t)] = normal(gen); gh[size_t(t)] = normal(gen); }
  p.grad_logp = glp.data(); p.grad_entropy = gh.data(); p.grad_logits = grad.data(); p.grad_row_stride = V;
  k.bwd(p, 0, T);

  for (int64_t t = 0; t < T; ++t) {
    const float* row = x.data() + t * V;
    double m = -INFINITY;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, double(row[j]) / temperature);
    double s = 0, sz = 0;
    for (int64_t j = 0; j < V; ++j) { double z = double(row[j]) / temperature; if (z == -INFINITY) continue;
      double e = std::exp(z - m); s += e; sz += e * z; }
    const double l = m + std::log(s), h = l - sz / s;
    expect_near(lse[size_t(t)], l, 1e-5 * std::fabs(l) + 1e-5, "lse", t);
    expect_near(logp[size_t(t)], double(row[ids[size_t(t)]]) / temperature - l, 2e-5, "logp", t);
    expect_near(ent[size_t(t)], h, 2e-5, "entropy", t);
    for (int64_t j = 0; j < V; ++j) {
      double z = double(row[j]) / temperature;
      double pj = z == -INFINITY ? 0.0 : std::exp(z - l);
      double g = (glp[size_t(t)] * ((j == ids[size_t(t)]) - pj) - (pj == 0 ? 0 : gh[size_t(t)] * pj * (z - l + h))) /
                 temperature;
      expect_near(grad[size_t(t * V + j)], g, 1e-5 + 1e-4 * std::fabs(g), "d logits", t);
      if (failures > 20) return;
    }
  }
  // in place gives the same gradient
  p.grad_logits = x.data();
  k.bwd(p, 0, T);
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] != grad[i]) { std::printf("FAIL %s: in-place gradient differs at %zu\n", k.name, i); ++failures; break; }
}

// The relative error of e^x over [-87, 0] (every 13th fp32 input, ~86M of them, and the ends):
// at most kExpBound, the "exp" row of tests/tolerances.py (1.64e-7 vector, 1.85e-7 portable, when
// measured on every input).
constexpr double kExpBound = 2e-7;

#if MEDIX_HAS_ISA_VARIANTS
MEDIX_TARGET_AVX2 __attribute__((flatten)) void exp_avx2(const float* x, float* y, int n) {
  for (int i = 0; i < n; i += 8) medix::cpu::Vec8::store(y + i, medix::cpu::exp_vec<medix::cpu::Vec8>(medix::cpu::Vec8::load(x + i)));
}
MEDIX_TARGET_AVX512 __attribute__((flatten)) void exp_avx512(const float* x, float* y, int n) {
  for (int i = 0; i < n; i += 16)
    medix::cpu::Vec16::store(y + i, medix::cpu::exp_vec<medix::cpu::Vec16>(medix::cpu::Vec16::load(x + i)));
}
#endif
void exp_portable(const float* x, float* y, int n) { for (int i = 0; i < n; ++i) y[i] = medix::cpu::exp_nonpos(x[i]); }

void check_exp(const Variant& k, void (*fn)(const float*, float*, int)) {
  constexpr int kBatch = 1 << 16;
  std::vector<float> x(kBatch), y(kBatch);
  double worst = 0, at = 0;
  uint64_t u = 0x80000000u;  // -0 ... -87 (0xC2AE0000), step 13
  while (u <= 0xC2AE0000u) {
    int n = 0;
    for (; n < kBatch && u <= 0xC2AE0000u; ++n, u += 13) { const uint32_t b = uint32_t(u); std::memcpy(&x[n], &b, 4); }
    if (n < kBatch) { x[n++] = -87.f; x[n++] = -1e-30f; }
    for (int i = n; i < kBatch; ++i) x[i] = 0.f;
    fn(x.data(), y.data(), kBatch);
    for (int i = 0; i < n; ++i) {
      const double want = std::exp(double(x[i])), err = std::fabs(double(y[i]) - want) / want;
      if (!(err <= worst)) { worst = err; at = x[i]; }
    }
  }
  if (!(worst <= kExpBound)) { std::printf("FAIL %s exp: relative error %.3g at x = %.9g\n", k.name, worst, at); ++failures; }
}

}  // namespace

int main() {
  for (const Variant& k : variants()) {
    if (!k.supported) continue;
    check(k, 1, 1, 1.f, false);
    check(k, 3, 7, 0.7f, false);
    check(k, 5, 1000, 1.f, false);
    check(k, 2, 4099, 1.3f, false);
    check(k, 2, 3000, 1.f, true);
    check(k, 2, 2049, 1.f, true);
  }
  const std::vector<Variant> v = variants();
  check_exp(v[0], exp_portable);
#if MEDIX_HAS_ISA_VARIANTS
  if (v[1].supported) check_exp(v[1], exp_avx2);
  if (v[2].supported) check_exp(v[2], exp_avx512);
#endif
  if (failures) { std::printf("%d failure(s)\n", failures); return 1; }
  std::printf("logprob kernel tests passed (cpu level %d)\n", medix::cpu::cpu_level());
  return 0;
}
