// Shared by loss_ops.cpp (CPU) and cuda_loss_ops.cpp (CUDA): argument checks of the fused
// log-prob ops and the translation of tensors into LogprobParams. Device-specific checks (ids in
// range, which needs a host sync on a GPU) stay in the callers.
#pragma once
#include <ATen/ATen.h>

#include "../common/logprob_params.h"
#include "checks.h"

namespace medix {

// logits [..., V] as [T, V] rows with unit column stride: a view when possible, else a copy.
inline at::Tensor logits_rows(const at::Tensor& logits) {
  const int64_t v = logits.size(-1);
  at::Tensor x = logits.dim() == 2 ? logits : logits.reshape({-1, v});
  if (x.stride(1) != 1 && v > 1) x = x.contiguous();
  return x;
}

// Checks shared by forward and backward; fills the input fields of p. Returns the [T, V] rows;
// *ids64 receives the ids as contiguous int64 (both must outlive the kernel).
inline at::Tensor prepare_logprob_inputs(const at::Tensor& logits, const at::Tensor& ids, double temperature,
                                         at::Tensor* ids64, LogprobParams* p) {
  check_float_tensor(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.size(-1) >= 1,
                    "medix: 'logits' must be [..., V] with V >= 1, got shape ", logits.sizes());
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
                   "medix: 'ids' must be an int64 (or int32) tensor, got ", ids.scalar_type());
  check_same_device(logits, "logits", ids, "ids");
  TORCH_CHECK_VALUE(ids.sizes() == logits.sizes().slice(0, logits.dim() - 1), "medix: 'ids' must have shape ",
                    logits.sizes().slice(0, logits.dim() - 1), " (logits without the vocabulary dimension), got ",
                    ids.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "medix: 'temperature' must be > 0, got ", temperature);
  at::Tensor x = logits_rows(logits);
  *ids64 = ids.reshape({-1}).to(at::kLong).contiguous();
  p->logits = x.data_ptr();
  p->dtype = dtype_tag(logits);
  p->ids = ids64->data_ptr<int64_t>();
  p->T = x.size(0);
  p->V = x.size(1);
  p->row_stride = x.stride(0);
  p->temperature = float(temperature);
  return x;
}

// A per-token fp32 vector ([T] values, any float dtype and shape) for the backward.
inline at::Tensor per_token(const at::Tensor& t, const at::Tensor& logits, int64_t n, const char* name) {
  check_same_device(logits, "logits", t, name);
  TORCH_CHECK_TYPE(t.is_floating_point(), "medix: '", name, "' must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == n, "medix: '", name, "' must hold one value per token (", n, "), got shape ",
                    t.sizes());
  return t.reshape({-1}).to(at::kFloat).contiguous();
}

// Backward inputs as fp32 [T] vectors; they must outlive the kernel.
struct LogprobBwdInputs { at::Tensor lse, grad_logp, entropy, grad_entropy; };

inline LogprobBwdInputs prepare_logprob_bwd(const at::Tensor& logits, LogprobParams* p, const at::Tensor& lse,
                                            const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                                            const c10::optional<at::Tensor>& grad_entropy, const at::Tensor& out_rows) {
  LogprobBwdInputs in;
  in.lse = per_token(lse, logits, p->T, "lse");
  in.grad_logp = per_token(grad_logp, logits, p->T, "grad_logp");
  if (grad_entropy.has_value()) {
    TORCH_CHECK_VALUE(entropy.has_value(), "medix: 'entropy' (the forward's) is required when 'grad_entropy' is given");
    in.entropy = per_token(*entropy, logits, p->T, "entropy");
    in.grad_entropy = per_token(*grad_entropy, logits, p->T, "grad_entropy");
  }
  p->lse = in.lse.data_ptr<float>();
  p->grad_logp = in.grad_logp.data_ptr<float>();
  p->entropy = grad_entropy.has_value() ? in.entropy.data_ptr<float>() : nullptr;
  p->grad_entropy = grad_entropy.has_value() ? in.grad_entropy.data_ptr<float>() : nullptr;
  p->grad_logits = out_rows.data_ptr();
  p->grad_row_stride = out_rows.stride(0);
  return in;
}

// The in-place backward writes over the logits: they must be viewable as [T, V] rows.
inline void check_inplace_rows(const at::Tensor& x, const at::Tensor& logits) {
  check_no_internal_overlap(logits, "logits");
  TORCH_CHECK_VALUE(x.data_ptr() == logits.data_ptr() && x.is_alias_of(logits),
                    "medix: in-place logprob backward needs 'logits' viewable as [T, V] rows with unit column stride, "
                    "got shape ", logits.sizes(), " and strides ", logits.strides());
}

}  // namespace medix
