// C++ unit tests of the torch-free CPU reward kernels (run by ctest; no framework, no torch).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "../cpu/cosine.h"
#include "../cpu/group_advantages.h"
#include "../cpu/group_offsets.h"

namespace {

int failures = 0;
void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.9g want %.9g\n", what, got, want);
    ++failures;
  }
}

struct Serial {
  template <typename F> void operator()(int64_t b, int64_t e, int64_t, const F& f) const { if (b < e) f(b, e); }
};

void test_grpo_fixed_groups() {
  std::vector<float> r = {1, 2, 3, 4, 5, 5, 5, 5};
  std::vector<float> adv(8), total(8), mean(2), stdv(2);
  bool deg[2];
  medix::GroupAdvParams p;
  p.values = r.data(); p.n = 8; p.group_size = 4; p.num_groups = 2; p.eps = 1e-6f;
  p.adv = adv.data(); p.total = total.data(); p.group_mean = mean.data(); p.group_std = stdv.data(); p.degenerate = deg;
  medix::cpu::group_advantages<float>(p, Serial{});
  const double s = std::sqrt(5.0 / 3.0);  // unbiased std of 1..4
  expect_near(mean[0], 2.5, 1e-6, "mean of group 0");
  expect_near(stdv[0], s, 1e-6, "std of group 0");
  expect_near(adv[0], (1 - 2.5) / (s + 1e-6), 1e-5, "grpo advantage");
  expect_near(adv[4], 0.0, 0.0, "equal rewards give exactly 0");
  if (deg[0] || !deg[1]) { std::printf("FAIL degenerate mask\n"); ++failures; }
}

void test_ragged_rloo_and_singleton() {
  std::vector<float> r = {7, 1, 2, 3};
  std::vector<int64_t> off = {0, 1, 4};
  std::vector<float> adv(4);
  medix::GroupAdvParams p;
  p.values = r.data(); p.n = 4; p.offsets = off.data(); p.num_groups = 2;
  p.mode = int(medix::AdvMode::kRloo); p.adv = adv.data();
  medix::cpu::group_advantages<float>(p, Serial{});
  expect_near(adv[0], 0.0, 0.0, "a group of one gets 0");
  expect_near(adv[1], 1 - (2 + 3) / 2.0, 1e-6, "rloo leave-one-out");
  p.mode = int(medix::AdvMode::kGrpo); p.singleton = int(medix::Singleton::kVerl); p.eps = 1e-6f;
  medix::cpu::group_advantages<float>(p, Serial{});
  expect_near(adv[0], 7 / (1 + 1e-6), 1e-5, "verl singleton: mean 0, std 1");
}

void test_composite_bf16_and_nan() {
  // two components, weights 0.5 / 2: totals 0.5*a + 2*b; a NaN component counts as 0 when asked
  std::vector<medix::bf16> v = {medix::from_float<medix::bf16>(1.f), medix::from_float<medix::bf16>(0.f),
                                medix::from_float<medix::bf16>(NAN), medix::from_float<medix::bf16>(1.f)};
  std::vector<float> w = {0.5f, 2.f}, total(2);
  std::vector<medix::bf16> adv(2);
  medix::GroupAdvParams p;
  p.values = v.data(); p.n = 2; p.k = 2; p.stride_n = 2; p.stride_k = 1; p.weights = w.data();
  p.group_size = 2; p.num_groups = 1; p.mode = int(medix::AdvMode::kDrGrpo); p.nan_to_zero = true;
  p.total = total.data(); p.adv = adv.data();
  medix::cpu::group_advantages<medix::bf16>(p, Serial{});
  expect_near(total[0], 0.5, 0, "weighted total");
  expect_near(total[1], 2.0, 0, "NaN component counted as 0");
  expect_near(medix::to_float(adv[0]), -0.75, 1e-2, "dr_grpo advantage in bf16");
}

// Every ISA variant of the group kernels the CPU can run (portable, AVX2, AVX-512, called
// directly, whatever MEDIX_CPU_LEVEL says) against a double-precision oracle written here, for
// every group size with a vector kernel and its neighbours, every rule, remainders of < 16
// groups, degenerate groups and composite rewards; on NaN/inf rewards (both policies) the
// variants must agree with the portable kernel (one semantics on every level).
struct Outputs {
  std::vector<float> adv, total, mean, stdv;
  std::vector<char> deg;
  std::vector<float> slack;  // oracle only: the fp32 rounding of a group's mean, times its factor
};

constexpr int kOracle = -1;
const char* kVariantName[] = {"portable", "avx2", "avx512"};

bool variant_supported(int variant) {
#if MEDIX_HAS_ISA_VARIANTS
  if (variant == 2) return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                           __builtin_cpu_supports("avx512dq");
  if (variant == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return variant == 0;
}

// The advantages in double from the fp32 totals, as the float64 reference computes them.
void oracle(const medix::GroupAdvParams& p, const std::vector<float>& totals, double batch_std, Outputs* o) {
  for (int64_t g = 0; g < p.num_groups; ++g) {
    int64_t b, e; medix::cpu::group_bounds(p, g, &b, &e);
    const int64_t c = e - b;
    double sum = 0, ss = 0;
    bool equal = true;
    for (int64_t i = b; i < e; ++i) { sum += totals[i]; equal = equal && totals[i] == totals[b]; }
    const double mean = c ? sum / double(c) : 0.0;
    for (int64_t i = b; i < e; ++i) ss += (totals[i] - mean) * (totals[i] - mean);
    const double sd = c > 1 ? std::sqrt(ss / double(c - 1)) : 0.0;
    o->mean[g] = float(mean); o->stdv[g] = float(sd); o->deg[g] = c > 0 && equal;
    double factor = 1.0;
    if (c == 1 || (c > 0 && equal)) factor = 0.0;
    else if (p.mode == int(medix::AdvMode::kRloo)) factor = double(c) / double(c - 1);
    else if (p.mode == int(medix::AdvMode::kDrGrpo) || p.scale == int(medix::AdvScale::kNone)) factor = 1.0;
    else if (p.scale == int(medix::AdvScale::kBatch)) factor = 1.0 / (batch_std + double(p.eps));
    else factor = 1.0 / (sd + double(p.eps));
    for (int64_t i = b; i < e; ++i) {
      o->adv[i] = float((totals[i] - mean) * factor);
      // An fp32 kernel's mean is off by up to a few ulp (summation order), r - mean by as much.
      o->slack[i] = float(4 * 1.2e-7 * std::fabs(mean) * factor);
    }
  }
}

Outputs run_groups(const std::vector<float>& vals, int64_t n, int64_t k, const std::vector<float>* w, int64_t g,
                   int mode, int scale, bool nan_to_zero, int variant, const std::vector<int64_t>* offsets = nullptr) {
  Outputs o;
  const int64_t groups = offsets ? int64_t(offsets->size()) - 1 : n / g;
  o.adv.assign(n, -1.f); o.total.assign(n, -1.f); o.mean.assign(groups, -1.f); o.stdv.assign(groups, -1.f);
  o.deg.assign(groups, 2);
  std::unique_ptr<bool[]> deg(new bool[groups]);
  medix::GroupAdvParams p;
  p.values = vals.data(); p.n = n; p.k = k; p.stride_n = k; p.stride_k = 1;
  p.weights = w ? w->data() : nullptr;
  p.group_size = offsets ? 0 : g; p.offsets = offsets ? offsets->data() : nullptr;
  p.num_groups = groups; p.mode = mode; p.scale = scale; p.eps = 1e-4f; p.nan_to_zero = nan_to_zero;
  p.total = w ? o.total.data() : nullptr; p.adv = o.adv.data();
  p.group_mean = o.mean.data(); p.group_std = o.stdv.data(); p.degenerate = deg.get();
  std::vector<float> totals(n);  // the row totals in double, rounded once (every kernel's definition)
  for (int64_t i = 0; i < n; ++i) totals[i] = medix::cpu::row_total<float>(p, i);
  double batch_std = 0;
  if (scale == int(medix::AdvScale::kBatch)) {
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; ++i) s += totals[i];
    for (int64_t i = 0; i < n; ++i) ss += (totals[i] - s / n) * (totals[i] - s / n);
    batch_std = std::sqrt(ss / double(n - 1));
  }
  if (variant == kOracle) {
    o.slack.assign(n, 0.f);
    oracle(p, totals, batch_std, &o);
    if (w) o.total = totals;
    return o;
  }
  if (variant == 0) medix::cpu::group_range_base<float>(p, 0, groups, batch_std);
#if MEDIX_HAS_ISA_VARIANTS
  if (variant == 1) medix::cpu::group_range_avx2<float>(p, 0, groups, batch_std);
  if (variant == 2) medix::cpu::group_range_avx512<float>(p, 0, groups, batch_std);
#endif
  o.deg.assign(deg.get(), deg.get() + groups);
  return o;
}

bool same(float a, float b, float tol) {
  if (a == b) return true;
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(a - b) <= tol * (1.f + std::fabs(b));
}

void compare(const Outputs& got, const Outputs& want, const char* what, int64_t g, int variant) {
  int bad = 0;
  auto note = [&](bool ok, const char* field, size_t i, double a, double b) {
    if (!ok && bad++ < 3) std::printf("  %s[%zu]: got %.9g want %.9g\n", field, i, a, b);
  };
  for (size_t i = 0; i < want.adv.size(); ++i) {
    const float slack = want.slack.empty() ? 0.f : want.slack[i];
    note(same(got.adv[i], want.adv[i], 2e-5f) || std::fabs(got.adv[i] - want.adv[i]) <= slack, "adv", i, got.adv[i],
         want.adv[i]);
    note(same(got.total[i], want.total[i], 0.f), "total", i, got.total[i], want.total[i]);
  }
  for (size_t i = 0; i < want.mean.size(); ++i) {
    note(same(got.mean[i], want.mean[i], 1e-6f), "mean", i, got.mean[i], want.mean[i]);
    note(same(got.stdv[i], want.stdv[i], 1e-5f), "std", i, got.stdv[i], want.stdv[i]);
    note(got.deg[i] == want.deg[i], "degenerate", i, got.deg[i], want.deg[i]);
  }
  if (bad) {
    std::printf("FAIL %s, %s kernels (group size %lld): %d mismatches\n", what, kVariantName[variant], (long long)g, bad);
    ++failures;
  }
}

// Each variant the CPU runs against the oracle (finite rewards) or the portable kernel (non-finite).
void check_variants(const std::vector<float>& v, int64_t n, int64_t k, const std::vector<float>* w, int64_t g,
                    int mode, int scale, bool nan_to_zero, const std::vector<int64_t>* off, bool finite,
                    const char* what) {
  const Outputs want = run_groups(v, n, k, w, g, mode, scale, nan_to_zero, finite ? kOracle : 0, off);
  for (int variant = 0; variant <= 2; ++variant)
    if (variant_supported(variant))
      compare(run_groups(v, n, k, w, g, mode, scale, nan_to_zero, variant, off), want, what, g, variant);
}

void test_fixed_group_kernels() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.f, 3.f);
  const int sizes[] = {2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 24, 32, 48, 64, 80, 300};
  for (int g : sizes) {
    for (int64_t groups : {int64_t(1), int64_t(16), int64_t(37), int64_t(100)}) {
      const int64_t n = groups * g;
      std::vector<float> r(n);
      for (auto& x : r) x = std::round(u(rng) * 2.f) / 2.f;  // ties: some degenerate groups
      for (int64_t i = 0; i < g && groups > 2; ++i) r[2 * g + i] = 0.1f;  // equal, not exactly summable
      for (int mode = 0; mode < 3; ++mode)
        for (int scale = 0; scale < 3; ++scale)
          check_variants(r, n, 1, nullptr, g, mode, scale, false, nullptr, true, "plain rewards");
      if (groups > 20) {  // non-finite rewards: the portable kernel's semantics, both policies
        r[5] = NAN; r[n - 1] = INFINITY; r[3 * g] = -INFINITY;
        for (bool z : {false, true})
          check_variants(r, n, 1, nullptr, g, 0, 0, z, nullptr, false, z ? "nan_to_zero" : "NaN propagates");
      }
      for (int64_t k : {int64_t(2), int64_t(3), int64_t(4), int64_t(8), int64_t(16)}) {
        std::vector<float> c(n * k), w(k);
        for (auto& x : c) x = float(rng() % 2);
        for (int64_t j = 0; j < k; ++j) w[j] = 0.1f * float(j + 1);
        if (groups > 20) c[7] = NAN;  // counted as 0: the totals stay finite
        check_variants(c, n, k, &w, g, 0, 0, true, nullptr, true, "composite rewards");
        check_variants(c, n, k, &w, g, 2, 1, true, nullptr, true, "composite rewards, rloo");
      }
    }
  }
}

void test_ragged_group_kernels() {
  std::mt19937 rng(11);
  for (int64_t n : {int64_t(7), int64_t(500), int64_t(5000)}) {
    for (int64_t max_size : {int64_t(20), int64_t(70)}) {
      std::vector<int64_t> off = {0};
      while (off.back() < n) off.push_back(std::min<int64_t>(n, off.back() + int64_t(rng() % max_size)));  // 0..
      std::vector<float> r(n);
      for (auto& x : r) x = float(rng() % 4) * 0.25f;
      for (int mode = 0; mode < 3; ++mode)
        for (int scale = 0; scale < 3; ++scale)
          check_variants(r, n, 1, nullptr, 0, mode, scale, false, &off, true, "ragged rewards");
      r[n / 2] = NAN; r[n - 1] = -INFINITY;
      for (bool z : {false, true}) check_variants(r, n, 1, nullptr, 0, 0, 0, z, &off, false, "ragged non-finite");
      std::vector<float> c(n * 4), w = {0.5175f, 0.3375f, 0.045f, 0.1f};
      for (auto& x : c) x = float(rng() % 2);
      check_variants(c, n, 4, &w, 0, 0, 0, false, &off, true, "ragged composite");
    }
  }
}

void test_group_offsets() {
  const std::vector<int64_t> ids = {3, 3, 5, 9, 9, 9, 10};
  const medix::cpu::GroupIdScan s = medix::cpu::scan_group_ids(ids.data(), int64_t(ids.size()));
  std::vector<int64_t> off(s.num_groups + 1, -1);
  medix::cpu::fill_group_offsets(ids.data(), int64_t(ids.size()), s.num_groups, off.data());
  const std::vector<int64_t> want = {0, 2, 3, 6, 7};
  if (s.num_groups != 4 || s.first_decrease != -1 || off != want) { std::printf("FAIL group offsets\n"); ++failures; }
  const std::vector<int32_t> bad = {0, 0, 1, 0};
  if (medix::cpu::scan_group_ids(bad.data(), 4).first_decrease != 3) { std::printf("FAIL decrease position\n"); ++failures; }
  const std::vector<int32_t> one = {7};
  if (medix::cpu::scan_group_ids(one.data(), 1).num_groups != 1 || medix::cpu::scan_group_ids(one.data(), 0).num_groups != 0) {
    std::printf("FAIL group offsets of one / no id\n"); ++failures;
  }
}

void test_cosine() {
  std::vector<float> x = {1, 0, 0, 0, 3, 4}, y = {1, 0, 5, 0, 3, 4};
  std::vector<float> out(3);
  medix::CosineParams p;
  p.x = x.data(); p.y = y.data(); p.b = 3; p.d = 2; p.x_stride = 2; p.y_stride = 2; p.out = out.data();
  medix::cpu::cosine_rewards<float>(p, Serial{});
  expect_near(out[0], 1.0, 1e-7, "parallel vectors");
  expect_near(out[1], 0.0, 0.0, "a zero vector gives 0, not NaN");
  expect_near(out[2], 1.0, 1e-7, "same vector");
  p.has_threshold = true; p.threshold = 0.8f;
  medix::cpu::cosine_rewards<float>(p, Serial{});
  expect_near(out[1], 0.0, 0.0, "threshold below");
  expect_near(out[2], 1.0, 0.0, "threshold above");
}

void test_half_conversions() {
  const float vals[] = {0.f, 1.f, -2.5f, 65504.f, 6.1e-5f, 5.96e-8f, 1e-3f};
  for (float v : vals) {
    float h = medix::to_float(medix::from_float<medix::f16>(v));
    expect_near(h, v, std::fabs(v) * 1e-3 + 6e-8, "fp16 round trip");
    float b = medix::to_float(medix::from_float<medix::bf16>(v));
    expect_near(b, v, std::fabs(v) * 8e-3, "bf16 round trip");
  }
}

}  // namespace

int main() {
  test_grpo_fixed_groups();
  test_ragged_rloo_and_singleton();
  test_composite_bf16_and_nan();
  test_fixed_group_kernels();
  test_ragged_group_kernels();
  test_group_offsets();
  test_cosine();
  test_half_conversions();
  if (failures) { std::printf("%d failure(s)\n", failures); return 1; }
  std::printf("reward kernel tests passed (cpu level %d)\n", medix::cpu::cpu_level());
  return 0;
}
