// Links every CUDA launcher into one program: a compile-and-link check for machines without a
// GPU. It runs the kernels only when asked (`cuda_link_check run`), on a real GPU.
#include <cstdio>
#include <cstring>

#include "../cuda/reward_kernels.cuh"

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "run") != 0) {
    std::printf("linked: medix::cuda::group_advantages, medix::cuda::cosine_rewards\n");
    return 0;
  }
  float* d = nullptr;
  if (cudaMalloc(&d, 64 * sizeof(float)) != cudaSuccess) { std::printf("no GPU\n"); return 1; }
  cudaMemset(d, 0, 64 * sizeof(float));
  medix::CosineParams c;
  c.x = d; c.y = d; c.b = 4; c.d = 8; c.x_stride = 8; c.y_stride = 8; c.out = d + 40;
  cudaError_t err = medix::cuda::cosine_rewards(c, medix::DType::kFloat32, nullptr);
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  std::printf("cosine_rewards: %s\n", cudaGetErrorString(err));
  cudaFree(d);
  return err == cudaSuccess ? 0 : 1;
}
