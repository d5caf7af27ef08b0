// C++ unit tests of the torch-free CPU reward kernels (run by ctest; no framework, no torch).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../cpu/cosine.h"
#include "../cpu/group_advantages.h"

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
  test_cosine();
  test_half_conversions();
  if (failures) { std::printf("%d failure(s)\n", failures); return 1; }
  std::printf("reward kernel tests passed\n");
  return 0;
}
