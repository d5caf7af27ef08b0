// Shared by reward_ops.cpp (CPU) and cuda_reward_ops.cpp (CUDA): argument checks and the
// translation of tensors into the torch-free parameter structs.
#pragma once
#include <ATen/ATen.h>

#include "../common/cosine_params.h"
#include "../common/group_advantages_params.h"

namespace medix {

// total is [N] for composite rewards (weights given), [0] otherwise.
struct GroupAdvOutputs { at::Tensor adv, total, mean, std, degenerate; };

GroupAdvOutputs prepare_group_advantages(const at::Tensor& values, const c10::optional<at::Tensor>& weights,
                                         const c10::optional<at::Tensor>& offsets, int64_t group_size,
                                         int64_t mode, int64_t scale, int64_t singleton, double eps,
                                         bool nan_to_zero, GroupAdvParams* p);

CosineParams prepare_cosine(const at::Tensor& x, const at::Tensor& y, double eps,
                            const c10::optional<double>& threshold, at::Tensor* out);

}  // namespace medix
