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
#include "logprob_glue.h"

namespace medix {
namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "medix: ", op, " CUDA kernel failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logprob_fwd_cuda(const at::Tensor& logits, const at::Tensor& ids,
                                                                double temperature, bool with_entropy) {
  TORCH_CHECK_VALUE(logits.is_cuda(), "medix: 'logits' must be a CUDA tensor for the CUDA kernel, got ",
                    logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_logprob_inputs(logits, ids, temperature, &ids64, &p);
  auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor logp = at::empty(ids.sizes(), f32), lse = at::empty(ids.sizes(), f32);
  at::Tensor entropy = with_entropy ? at::empty(ids.sizes(), f32) : at::empty({0}, f32);
  p.logp = logp.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.entropy = with_entropy ? entropy.data_ptr<float>() : nullptr;
  check_launch(cuda::logprob_fwd(p, at::cuda::getCurrentCUDAStream()), "logprob_fwd");
  return {logp, lse, entropy};
}

void launch_bwd(LogprobParams& p) {
  check_launch(cuda::logprob_bwd(p, at::cuda::getCurrentCUDAStream()), "logprob_bwd");
}

at::Tensor logprob_bwd_cuda(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& lse,
                            const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                            const c10::optional<at::Tensor>& grad_entropy, double temperature) {
  TORCH_CHECK_VALUE(logits.is_cuda(), "medix: 'logits' must be a CUDA tensor for the CUDA kernel, got ",
                    logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  LogprobParams p;
  at::Tensor ids64;
  // x (possibly a contiguous copy of the logits) and ids64 must outlive the launch: keep them.
  at::Tensor x = prepare_logprob_inputs(logits, ids, temperature, &ids64, &p);
  at::Tensor grad = at::empty(logits.sizes(), logits.options());  // contiguous: its rows view is [T, V]
  auto in = prepare_logprob_bwd(logits, &p, lse, grad_logp, entropy, grad_entropy, grad.view({p.T, p.V}));
  launch_bwd(p);
  return grad;
}

void logprob_bwd_inplace_cuda(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& lse,
                              const at::Tensor& grad_logp, const c10::optional<at::Tensor>& entropy,
                              const c10::optional<at::Tensor>& grad_entropy, double temperature) {
  TORCH_CHECK_VALUE(logits.is_cuda(), "medix: 'logits' must be a CUDA tensor for the CUDA kernel, got ",
                    logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  LogprobParams p;
  at::Tensor ids64;
  at::Tensor x = prepare_logprob_inputs(logits, ids, temperature, &ids64, &p);
  check_inplace_rows(x, logits);
  auto in = prepare_logprob_bwd(logits, &p, lse, grad_logp, entropy, grad_entropy, x);
  launch_bwd(p);
}

}  // namespace

TORCH_LIBRARY_IMPL(medix, CUDA, m) {
  m.impl("logprob_fwd", &logprob_fwd_cuda);
  m.impl("logprob_bwd", &logprob_bwd_cuda);
  m.impl("logprob_bwd_", &logprob_bwd_inplace_cuda);
}

}  // namespace medix
