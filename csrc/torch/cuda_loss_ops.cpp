// CUDA registrations of the fused per-token log-prob / entropy ops (built only with a CUDA torch).
// Schemas live in loss_ops.cpp; the kernels (csrc/cuda/logprob.cu) are torch-free. Here: argument
// checks, the translation of tensors into LogprobParams, the current stream, error reporting.
//
// Not checked here: ids in [0, V) (that needs a device-to-host sync; the Python wrappers check
// it). The kernels never read outside a row for a bad id; its log-prob comes out NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>  // checks.h uses at::parallel_for
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/logprob_params.h"
#include "../cuda/logprob.cuh"
#include "checks.h"

namespace medix {
namespace {

// logits [..., V] as [T, V] rows with unit column stride: a view when possible, else a copy.
at::Tensor as_rows(const at::Tensor& logits) {
  const int64_t v = logits.size(-1);
  at::Tensor x = logits.dim() == 2 ? logits : logits.reshape({-1, v});
  if (x.stride(1) != 1 && v > 1) x = x.contiguous();
  return x;
}

// Checks shared by forward and backward; fills the input fields of p. Returns the [T, V] rows.
at::Tensor prepare_inputs(const at::Tensor& logits, const at::Tensor& ids, double temperature, at::Tensor* ids64,
                          LogprobParams* p) {
  check_float_tensor(logits, "logits");
  TORCH_CHECK_VALUE(logits.is_cuda(), "medix: 'logits' must be a CUDA tensor for the CUDA kernel, got ",
                    logits.device());
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.size(-1) >= 1, "medix: 'logits' must be [..., V] with V >= 1, got shape ",
                    logits.sizes());
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
                   "medix: 'ids' must be an int64 (or int32) tensor, got ", ids.scalar_type());
  check_same_device(logits, "logits", ids, "ids");
  TORCH_CHECK_VALUE(ids.sizes() == logits.sizes().slice(0, logits.dim() - 1), "medix: 'ids' must have shape ",
                    logits.sizes().slice(0, logits.dim() - 1), " (logits without the vocabulary dimension), got ",
                    ids.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "medix: 'temperature' must be > 0, got ", temperature);
  at::Tensor x = as_rows(logits);
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
at::Tensor per_token(const at::Tensor& t, const at::Tensor& logits, int64_t n, const char* name) {
  check_same_device(logits, "logits", t, name);
  TORCH_CHECK_TYPE(t.is_floating_point(), "medix: '", name, "' must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == n, "medix: '", name, "' must hold one value per token (", n, "), got shape ",
                    t.sizes());
  return t.reshape({-1}).to(at::kFloat).contiguous();
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "medix: ", op, " CUDA kernel failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprob_fwd_cuda(const at::Tensor& logits, const at::Tensor& ids,
                                                                double temperature, bool with_entropy) {
  const c10::cuda::CUDAGuard guard(logits.device());
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_inputs(logits, ids, temperature, &ids64, &p);
  auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty(ids.sizes(), f32), lse = at::empty(ids.sizes(), f32);
  at::Tensor entropy = with_entropy ? at::empty(ids.sizes(), f32) : at::empty({0}, f32);
  p.logp = logp.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.entropy = with_entropy ? entropy.data_ptr<float>() : nullptr;
  check_launch(cuda::logprob_fwd(p, at::cuda::getCurrentCUDAStream()), "logprob_fwd");
  return {logp, lse, entropy};
}

// Writes the gradient into out_rows ([T, V], unit column stride; may be the logits rows).
void logprob_bwd_into(const at::Tensor& logits, LogprobParams& p, const at::Tensor& lse, const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                      const c10::optional<at::Tensor>& grad_entropy, const at::Tensor& out_rows) {
  const int64_t t = p.T;
  at::Tensor lse32 = per_token(lse, logits, t, "lse");
  at::Tensor glp = per_token(grad_logp, logits, t, "grad_logp");
  at::Tensor ent, gent;
  if (grad_entropy.has_value()) {
    TORCH_CHECK_VALUE(entropy.has_value(), "medix: 'entropy' (the forward's) is required when 'grad_entropy' is given");
    ent = per_token(*entropy, logits, t, "entropy");
    gent = per_token(*grad_entropy, logits, t, "grad_entropy");
  }
  p.lse = lse32.data_ptr<float>();
  p.grad_logp = glp.data_ptr<float>();
  p.entropy = grad_entropy.has_value() ? ent.data_ptr<float>() : nullptr;
  p.grad_entropy = grad_entropy.has_value() ? gent.data_ptr<float>() : nullptr;
  p.grad_logits = out_rows.data_ptr();
  p.grad_row_stride = out_rows.stride(0);
  check_launch(cuda::logprob_bwd(p, at::cuda::getCurrentCUDAStream()), "logprob_bwd");
}

at::Tensor logprob_bwd_cuda(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& lse,
                            const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                            const c10::optional<at::Tensor>& grad_entropy, double temperature) {
  const c10::cuda::CUDAGuard guard(logits.device());
  LogprobParams p;
  at::Tensor ids64;
  // x (possibly a contiguous copy of the logits) and ids64 must outlive the launch: keep them.
  at::Tensor x = prepare_inputs(logits, ids, temperature, &ids64, &p);
  at::Tensor grad = at::empty(logits.sizes(), logits.options());  // contiguous: its rows view is [T, V]
  logprob_bwd_into(logits, p, lse, grad_logp, entropy, grad_entropy, grad.view({p.T, p.V}));
  return grad;
}

void logprob_bwd_inplace_cuda(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& lse,
                              const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                              const c10::optional<at::Tensor>& grad_entropy, double temperature) {
  const c10::cuda::CUDAGuard guard(logits.device());
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_inputs(logits, ids, temperature, &ids64, &p);
  TORCH_CHECK_VALUE(x.is_alias_of(logits) && x.data_ptr() == logits.data_ptr(),
                    "medix: in-place logprob backward needs 'logits' viewable as [T, V] rows with unit column stride, "
                    "got shape ", logits.sizes(), " and strides ", logits.strides());
  logprob_bwd_into(logits, p, lse, grad_logp, entropy, grad_entropy, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(medix, CUDA, m) {
  m.impl("logprob_fwd", &logprob_fwd_cuda);
  m.impl("logprob_bwd", &logprob_bwd_cuda);
  m.impl("logprob_bwd_", &logprob_bwd_inplace_cuda);
}

}  // namespace medix
