// Torch glue for the reward-side ops: group advantages (plain and composite) and cosine rewards.
// Schemas, argument checks and the CPU implementations; the CUDA implementations are registered
// in cuda_reward_ops.cpp (built only with a CUDA torch). Python adds fake kernels.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include "../cpu/cosine.h"
#include "../cpu/group_advantages.h"
#include "../cpu/group_offsets.h"
#include "checks.h"
#include "reward_ops.h"

namespace medix {

GroupAdvOutputs prepare_group_advantages(const at::Tensor& values, const c10::optional<at::Tensor>& weights,
                                         const c10::optional<at::Tensor>& offsets, int64_t group_size,
                                         int64_t mode, int64_t scale, int64_t singleton, double eps,
                                         bool nan_to_zero, GroupAdvParams* p) {
  check_float_tensor(values, "rewards");
  TORCH_CHECK_VALUE(values.dim() == 1 || values.dim() == 2,
                    "medix: 'rewards' must be 1-D [N] (or 'components' 2-D [N, K]), got shape ", values.sizes());
  const int64_t n = values.size(0), k = values.dim() == 2 ? values.size(1) : 1;
  TORCH_CHECK_VALUE(k >= 1, "medix: 'components' must have at least one column, got shape ", values.sizes());
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "medix: 'mode' code must be 0..2, got ", mode);
  TORCH_CHECK_VALUE(scale >= 0 && scale <= 2, "medix: 'scale' code must be 0..2, got ", scale);
  TORCH_CHECK_VALUE(singleton >= 0 && singleton <= 1, "medix: 'singleton' code must be 0..1, got ", singleton);
  TORCH_CHECK_VALUE(eps >= 0, "medix: 'eps' must be >= 0, got ", eps);
  int64_t num_groups;
  if (offsets.has_value()) {
    const auto& o = *offsets;
    check_same_device(values, "rewards", o, "offsets");
    TORCH_CHECK_TYPE(o.scalar_type() == at::kLong, "medix: 'offsets' must be int64, got ", o.scalar_type());
    check_dim(o, "offsets", 1, "[num_groups + 1]");
    TORCH_CHECK_VALUE(o.numel() >= 1, "medix: 'offsets' must hold at least one entry");
    num_groups = o.numel() - 1;
  } else {
    TORCH_CHECK_VALUE(group_size >= 1, "medix: 'group_size' must be >= 1, got ", group_size);
    TORCH_CHECK_VALUE(n % group_size == 0, "medix: the number of rewards (", n,
                      ") must be divisible by 'group_size' (", group_size, ")");
    num_groups = n / group_size;
  }
  if (weights.has_value()) {
    const auto& w = *weights;
    check_same_device(values, "components", w, "weights");
    TORCH_CHECK_TYPE(w.scalar_type() == at::kFloat, "medix: 'weights' must be float32, got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == k, "medix: 'weights' must be 1-D [", k, "], got shape ", w.sizes());
  }
  auto fopts = values.options().dtype(at::kFloat);
  // The per-sample total is an output only for composite rewards (weights given).
  GroupAdvOutputs out{at::empty({n}, values.options()), at::empty({weights.has_value() ? n : 0}, fopts),
                      at::empty({num_groups}, fopts),
                      at::empty({num_groups}, fopts), at::empty({num_groups}, values.options().dtype(at::kBool))};
  p->values = values.data_ptr();
  p->n = n; p->k = k;
  p->stride_n = values.stride(0);
  p->stride_k = values.dim() == 2 ? values.stride(1) : 1;
  p->weights = weights.has_value() ? weights->data_ptr<float>() : nullptr;
  p->offsets = offsets.has_value() ? offsets->data_ptr<int64_t>() : nullptr;
  p->group_size = group_size; p->num_groups = num_groups;
  p->mode = int(mode); p->scale = int(scale); p->singleton = int(singleton);
  p->eps = float(eps); p->nan_to_zero = nan_to_zero;
  p->total = weights.has_value() ? out.total.data_ptr<float>() : nullptr;
  p->adv = out.adv.data_ptr();
  p->group_mean = out.mean.data_ptr<float>();
  p->group_std = out.std.data_ptr<float>();
  p->degenerate = out.degenerate.data_ptr<bool>();
  return out;
}

CosineParams prepare_cosine(const at::Tensor& x, const at::Tensor& y, double eps,
                            const c10::optional<double>& threshold, at::Tensor* out) {
  check_float_tensor(x, "pred");
  check_float_tensor(y, "ref");
  check_dim(x, "pred", 2, "[B, D]");
  check_dim(y, "ref", 2, "[B, D]");
  check_same_device(x, "pred", y, "ref");
  TORCH_CHECK_VALUE(x.sizes() == y.sizes(), "medix: 'pred' and 'ref' must have the same shape, got ", x.sizes(),
                    " and ", y.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), "medix: 'pred' and 'ref' must have the same dtype, got ",
                   x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) >= 1, "medix: embeddings must have D >= 1 columns, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.stride(1) == 1 && y.stride(1) == 1, "medix: embedding rows must be contiguous");
  TORCH_CHECK_VALUE(eps > 0, "medix: 'eps' must be > 0, got ", eps);
  *out = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  CosineParams p;
  p.x = x.data_ptr(); p.y = y.data_ptr();
  p.b = x.size(0); p.d = x.size(1);
  p.x_stride = x.stride(0); p.y_stride = y.stride(0);
  p.eps = float(eps);
  p.has_threshold = threshold.has_value();
  p.threshold = threshold.has_value() ? float(*threshold) : 0.f;
  p.out = out->data_ptr<float>();
  return p;
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_advantages_cpu(
    const at::Tensor& values, const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& offsets,
    int64_t group_size, int64_t mode, int64_t scale, int64_t singleton, double eps, bool nan_to_zero) {
  GroupAdvParams p;
  auto o = prepare_group_advantages(values, weights, offsets, group_size, mode, scale, singleton, eps,
                                    nan_to_zero, &p);
  if (offsets.has_value()) {
    // Ragged groups: the kernel trusts the offsets, so check them here (cheap on the CPU).
    const int64_t* off = p.offsets;
    TORCH_CHECK_VALUE(off[0] == 0 && off[p.num_groups] == p.n, "medix: 'offsets' must start at 0 and end at N=", p.n);
    for (int64_t g = 0; g < p.num_groups; ++g)
      TORCH_CHECK_VALUE(off[g] <= off[g + 1], "medix: 'offsets' must be non-decreasing (position ", g, ")");
  }
  dispatch_float(values, [&](auto tag) { cpu::group_advantages<decltype(tag)>(p, AtenParallelFor{}); });
  return {o.adv, o.total, o.mean, o.std, o.degenerate};
}

// Offsets [G + 1] (int64) of the contiguous groups given by non-decreasing ids (one pass to count
// and check, one to fill): what the Python wrapper otherwise builds from several torch ops.
at::Tensor group_offsets_cpu(const at::Tensor& group_index) {
  const auto st = group_index.scalar_type();
  TORCH_CHECK_TYPE(at::isIntegralType(st, /*includeBool=*/false), "medix: 'group_index' must be an integer tensor, got ",
                   st);
  check_dim(group_index, "group_index", 1, "[N]");
  at::Tensor ids = (st == at::kLong || st == at::kInt) ? group_index.contiguous() : group_index.to(at::kLong).contiguous();
  const int64_t n = ids.numel();
  at::Tensor out;
  auto run = [&](auto* id) {
    const cpu::GroupIdScan s = cpu::scan_group_ids(id, n);
    if (s.first_decrease >= 0) {
      const int64_t i = s.first_decrease;
      TORCH_CHECK_VALUE(false, "'group_index' must be non-decreasing (rewards laid out group by group); position ", i,
                        " has id ", int64_t(id[i]), " after ", int64_t(id[i - 1]));
    }
    out = at::empty({s.num_groups + 1}, ids.options().dtype(at::kLong));
    cpu::fill_group_offsets(id, n, s.num_groups, out.data_ptr<int64_t>());
  };
  if (ids.scalar_type() == at::kInt) run(ids.data_ptr<int32_t>());
  else run(ids.data_ptr<int64_t>());
  return out;
}

at::Tensor cosine_rewards_cpu(const at::Tensor& x, const at::Tensor& y, double eps, c10::optional<double> threshold) {
  at::Tensor out;
  CosineParams p = prepare_cosine(x, y, eps, threshold, &out);
  dispatch_float(x, [&](auto tag) { cpu::cosine_rewards<decltype(tag)>(p, AtenParallelFor{}); });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medix, m) {
  m.def(
      "group_advantages(Tensor values, Tensor? weights, Tensor? offsets, int group_size, int mode, int scale, "
      "int singleton, float eps, bool nan_to_zero) -> (Tensor adv, Tensor total, Tensor mean, Tensor std, "
      "Tensor degenerate)");
  m.def("cosine_rewards(Tensor pred, Tensor ref, float eps, float? threshold) -> Tensor");
  m.def("group_offsets(Tensor group_index) -> Tensor");
}

TORCH_LIBRARY_IMPL(medix, CPU, m) {
  m.impl("group_advantages", &group_advantages_cpu);
  m.impl("cosine_rewards", &cosine_rewards_cpu);
  m.impl("group_offsets", &group_offsets_cpu);
}

}  // namespace medix
