// The Python module medix_kernels._C: importing it registers the ops in torch.ops.medix.
#include <pybind11/pybind11.h>
#include <torch/version.h>

// Read from the file (not through the module) when the module fails to load: an extension built
// against another torch usually fails on an undefined symbol, and medix_kernels names both versions.
extern "C" __attribute__((used)) const char medix_built_with_torch[] = "medix-built-with-torch " TORCH_VERSION;

#include "../cpu/isa.h"

namespace {
bool cuda_compiled() {
#ifdef MEDIX_WITH_CUDA
  return true;
#else
  return false;
#endif
}
bool openmp_compiled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "medix_kernels compiled ops (registered in torch.ops.medix)";
  m.def("cuda_compiled", &cuda_compiled, "whether the CUDA kernels were compiled in");
  m.def("openmp_compiled", &openmp_compiled, "whether the CPU kernels were compiled with OpenMP");
  m.attr("built_with_torch") = TORCH_VERSION;
  m.def("cpu_level", &medix::cpu::cpu_level,
        "the vector ISA the CPU kernels use: 2 AVX-512, 1 AVX2 + FMA, 0 baseline (capped by MEDIX_CPU_LEVEL)");
}
