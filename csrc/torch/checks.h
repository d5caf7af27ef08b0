// Argument checks shared by the torch glue files. They run before any kernel launches and raise
// ValueError / TypeError in Python (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE), naming the argument.
// The Python wrappers validate first with friendlier messages; these guard direct op calls.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include "../common/dtypes.h"

namespace medix {

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, "medix: '", name,
                   "' must be float32, bfloat16 or float16, got ", st);
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == dim, "medix: '", name, "' must be ", dim, "-D ", shape, ", got shape ",
                    t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "medix: '", bn, "' is on ", b.device(), " but '", an,
                    "' is on ", a.device());
}

// A tensor written in place must not have elements sharing memory (a stride-0 / expanded view):
// each element's result would overwrite the others'. The rule torch applies to its own in-place ops.
inline void check_no_internal_overlap(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, "medix: '", name,
                    "' is written in place but its elements share memory (an expanded view: shape ", t.sizes(),
                    ", strides ", t.strides(), "); pass a tensor that owns its memory");
}

inline DType dtype_tag(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK_TYPE(false, "medix: unsupported dtype ", t.scalar_type());
  }
}

// Calls fn.template operator()<T>() with T = float / bf16 / f16 for the tensor's dtype.
template <typename Fn>
inline void dispatch_float(const at::Tensor& t, Fn&& fn) {
  switch (dtype_tag(t)) {
    case DType::kFloat32: fn(float{}); break;
    case DType::kBFloat16: fn(bf16{}); break;
    case DType::kFloat16: fn(f16{}); break;
  }
}

// at::parallel_for with the (begin, end, grain, fn) signature the torch-free kernels expect.
struct AtenParallelFor {
  template <typename F>
  void operator()(int64_t begin, int64_t end, int64_t grain, const F& fn) const {
    at::parallel_for(begin, end, grain, fn);
  }
};

}  // namespace medix
