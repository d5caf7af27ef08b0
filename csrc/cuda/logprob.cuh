// Host launchers of the fused per-token log-prob / entropy CUDA kernels. Torch-free: a params
// struct (csrc/common/logprob_params.h, dtype tag inside) and a stream. Each returns the first
// cudaError_t met (cudaSuccess when the launches went through); the torch glue turns it into an
// exception (csrc/torch/cuda_loss_ops.cpp). Arguments are validated by the glue before launch.
#pragma once
#include <cuda_runtime.h>

#include "../common/logprob_params.h"

namespace medix {
namespace cuda {

// logp, lse and (when p.entropy != nullptr) entropy of every row of p.logits.
cudaError_t logprob_fwd(const LogprobParams& p, cudaStream_t stream);

// grad_logits from lse, grad_logp and (when p.grad_entropy != nullptr) entropy and grad_entropy.
// p.grad_logits may equal p.logits (in-place backward over the logits).
cudaError_t logprob_bwd(const LogprobParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace medix
