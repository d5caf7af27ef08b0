// CUDA registrations of the reward-side ops (built only with a CUDA torch). Checks and the
// params translation are shared with the CPU path (reward_ops.h); the kernels are torch-free.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../cuda/reward_kernels.cuh"
#include "checks.h"
#include "reward_ops.h"

namespace medix {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_advantages_cuda(
    const at::Tensor& values, const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& offsets,
    int64_t group_size, int64_t mode, int64_t scale, int64_t singleton, double eps, bool nan_to_zero) {
  TORCH_CHECK_VALUE(values.is_cuda(), "medix: 'rewards' must be a CUDA tensor for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(values.device());
  GroupAdvParams p;
  auto o = prepare_group_advantages(values, weights, offsets, group_size, mode, scale, singleton, eps,
                                    nan_to_zero, &p);
  at::Tensor scratch = at::empty({1}, values.options().dtype(at::kDouble));
  cudaError_t err = cuda::group_advantages(p, dtype_tag(values), scratch.data_ptr<double>(),
                                           at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "medix: group_advantages CUDA launch failed: ", cudaGetErrorString(err));
  return {o.adv, o.total, o.mean, o.std, o.degenerate};
}

at::Tensor cosine_rewards_cuda(const at::Tensor& x, const at::Tensor& y, double eps, c10::optional<double> threshold) {
  TORCH_CHECK_VALUE(x.is_cuda(), "medix: 'pred' must be a CUDA tensor for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out;
  CosineParams p = prepare_cosine(x, y, eps, threshold, &out);
  cudaError_t err = cuda::cosine_rewards(p, dtype_tag(x), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "medix: cosine_rewards CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(medix, CUDA, m) {
  m.impl("group_advantages", &group_advantages_cuda);
  m.impl("cosine_rewards", &cosine_rewards_cuda);
}

}  // namespace medix
