// C++ unit tests of the torch-free CPU log-prob / entropy kernels against a double-precision
// reference (run by ctest; no framework, no torch).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../cpu/logprob.h"

namespace {

struct Serial {
  template <typename F> void operator()(int64_t b, int64_t e, int64_t, const F& f) const { if (b < e) f(b, e); }
};

int failures = 0;
void expect_near(double got, double want, double tol, const char* what, int64_t row) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s (row %lld): got %.9g want %.9g\n", what, (long long)row, got, want);
    ++failures;
  }
}

void check(int64_t T, int64_t V, float temperature, bool minus_inf_tail) {
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
  medix::cpu::logprob_fwd<float>(p, Serial{});

  std::vector<float> glp(static_cast<size_t>(T)), gh(static_cast<size_t>(T)), grad(x.size());
  for (int64_t t = 0; t < T; ++t) { glp[size_t(t)] = normal(gen); gh[size_t(t)] = normal(gen); }
  p.grad_logp = glp.data(); p.grad_entropy = gh.data(); p.grad_logits = grad.data(); p.grad_row_stride = V;
  medix::cpu::logprob_bwd<float>(p, Serial{});

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
  medix::cpu::logprob_bwd<float>(p, Serial{});
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] != grad[i]) { std::printf("FAIL in-place gradient differs at %zu\n", i); ++failures; break; }
}

}  // namespace

int main() {
  check(1, 1, 1.f, false);
  check(3, 7, 0.7f, false);
  check(5, 1000, 1.f, false);
  check(2, 4099, 1.3f, false);
  check(2, 3000, 1.f, true);
  if (failures) { std::printf("%d failure(s)\n", failures); return 1; }
  std::printf("logprob kernel tests passed (cpu level %d)\n", medix::cpu::cpu_level());
  return 0;
}
