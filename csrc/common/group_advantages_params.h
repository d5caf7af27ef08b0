// Parameters of the group-advantage kernels (CPU and CUDA), torch-free.
//
// Input is a matrix of reward components [n, k] (k == 1 for plain rewards) that the kernel
// reduces to one total reward per row (weighted sum, fp32), then normalises within groups.
// Groups are contiguous runs of rows: either fixed-size (group_size > 0, offsets == nullptr)
// or given by offsets[num_groups + 1] (ragged).
#pragma once
#include <cstdint>

namespace medix {

enum class AdvMode : int { kGrpo = 0, kDrGrpo = 1, kRloo = 2 };
enum class AdvScale : int { kGroup = 0, kBatch = 1, kNone = 2 };
// What a group of one sample gets: 0 (default), or verl's convention (mean 0, std 1).
enum class Singleton : int { kZero = 0, kVerl = 1 };

struct GroupAdvParams {
  const void* values = nullptr;   // [n, k], element type given by the kernel's template argument
  int64_t n = 0, k = 1;
  int64_t stride_n = 1, stride_k = 1;  // in elements
  const float* weights = nullptr;  // [k] (nullptr: k must be 1, weight 1)
  const int64_t* offsets = nullptr;  // [num_groups + 1] or nullptr
  int64_t group_size = 0;            // when offsets == nullptr
  int64_t num_groups = 0;
  int mode = 0, scale = 0, singleton = 0;
  float eps = 1e-6f;
  bool nan_to_zero = false;  // non-finite components count as 0 (else they propagate)

  float* total = nullptr;      // [n] fp32, optional (composite rewards)
  void* adv = nullptr;         // [n], same element type as values
  float* group_mean = nullptr; // [num_groups]
  float* group_std = nullptr;  // [num_groups], unbiased (0 for a group of one)
  bool* degenerate = nullptr;  // [num_groups], all rewards of the group equal
};

}  // namespace medix
