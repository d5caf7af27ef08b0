// Host launchers of the reward-side CUDA kernels. Torch-free: plain params structs, a dtype tag
// and a stream. Each returns the launch's cudaError_t (cudaSuccess when nothing went wrong).
#pragma once
#include <cuda_runtime.h>

#include "../common/cosine_params.h"
#include "../common/dtypes.h"
#include "../common/group_advantages_params.h"

namespace medix {
namespace cuda {

// Group advantages (plain or composite) in one launch; with scale == batch a first one-block
// launch writes the batch std into batch_scratch (a device double[1]: in float it could overflow).
cudaError_t group_advantages(const GroupAdvParams& p, DType dtype, double* batch_scratch, cudaStream_t stream);

// Row-wise cosine rewards, one warp per row.
cudaError_t cosine_rewards(const CosineParams& p, DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace medix
