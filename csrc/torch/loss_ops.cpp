// Torch glue for the fused per-token log-prob / entropy ops: schemas and CPU implementations.
// CUDA implementations: cuda_loss_ops.cpp; Triton: medix_kernels/triton_kernels/logprob.py.
//   logprob_fwd(logits [..., V], ids [...]) -> (logp, lse, entropy)      fp32, shaped like ids
//   logprob_bwd(...) -> grad_logits;  logprob_bwd_(logits, ...) writes the gradient over logits
#include <torch/library.h>

#include "../cpu/logprob.h"
#include "checks.h"
#include "logprob_glue.h"

namespace medix {
namespace {

void check_ids_in_range(const LogprobParams& p) {
  for (int64_t t = 0; t < p.T; ++t)
    TORCH_CHECK_VALUE(p.ids[t] >= 0 && p.ids[t] < p.V, "medix: 'ids' must be in [0, V=", p.V, "), got ",
                      p.ids[t], " at flat position ", t);
}

template <typename F>
void dispatch_logprob(const LogprobParams& p, F&& f) {
  switch (p.dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kBFloat16: f(bf16{}); break;
    case DType::kFloat16: f(f16{}); break;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprob_fwd_cpu(const at::Tensor& logits, const at::Tensor& ids,
                                                               double temperature, bool with_entropy) {
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_logprob_inputs(logits, ids, temperature, &ids64, &p);
  check_ids_in_range(p);
  auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty(ids.sizes(), f32), lse = at::empty(ids.sizes(), f32);
  at::Tensor entropy = with_entropy ? at::empty(ids.sizes(), f32) : at::empty({0}, f32);
  p.logp = logp.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.entropy = with_entropy ? entropy.data_ptr<float>() : nullptr;
  dispatch_logprob(p, [&](auto tag) { cpu::logprob_fwd<decltype(tag)>(p, AtenParallelFor{}); });
  return {logp, lse, entropy};
}

at::Tensor logprob_bwd_cpu(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& lse,
                           const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                           const c10::optional<at::Tensor>& grad_entropy, double temperature) {
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_logprob_inputs(logits, ids, temperature, &ids64, &p);
  check_ids_in_range(p);
  at::Tensor grad = at::empty(logits.sizes(), logits.options());  // contiguous: its rows view is [T, V]
  auto in = prepare_logprob_bwd(logits, &p, lse, grad_logp, entropy, grad_entropy, grad.view({p.T, p.V}));
  dispatch_logprob(p, [&](auto tag) { cpu::logprob_bwd<decltype(tag)>(p, AtenParallelFor{}); });
  return grad;
}

void logprob_bwd_inplace_cpu(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& lse,
                             const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                             const c10::optional<at::Tensor>& grad_entropy, double temperature) {
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_logprob_inputs(logits, ids, temperature, &ids64, &p);
  check_ids_in_range(p);
  check_inplace_rows(x, logits);
  auto in = prepare_logprob_bwd(logits, &p, lse, grad_logp, entropy, grad_entropy, x);
  dispatch_logprob(p, [&](auto tag) { cpu::logprob_bwd<decltype(tag)>(p, AtenParallelFor{}); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medix, m) {
  m.def("logprob_fwd(Tensor logits, Tensor ids, float temperature, bool with_entropy) -> (Tensor logp, Tensor lse, "
        "Tensor entropy)");
  m.def("logprob_bwd(Tensor logits, Tensor ids, Tensor lse, Tensor grad_logp, Tensor? entropy, Tensor? grad_entropy, "
        "float temperature) -> Tensor");
  m.def("logprob_bwd_(Tensor(a!) logits, Tensor ids, Tensor lse, Tensor grad_logp, Tensor? entropy, "
        "Tensor? grad_entropy, float temperature) -> ()");
}

TORCH_LIBRARY_IMPL(medix, CPU, m) {
  m.impl("logprob_fwd", &logprob_fwd_cpu);
  m.impl("logprob_bwd", &logprob_bwd_cpu);
  m.impl("logprob_bwd_", &logprob_bwd_inplace_cpu);
}

}  // namespace medix
