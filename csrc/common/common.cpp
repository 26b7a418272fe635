// What the ops share on the host, and the Python module the extension loads as.
// Each op defines its schema with TORCH_LIBRARY_FRAGMENT in csrc/<op>/<op>.cpp;
// fake kernels and autograd formulas are registered from dim_fused/ops/<op>/.
#include "common.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>

#include <array>
#include <string>
#include <utility>

namespace dim_fused {

Estimator parse_estimator(c10::string_view name) {
  static constexpr std::array<std::pair<const char*, Estimator>, 9> kNames = {{
      {"jsd", Estimator::JSD},
      {"gan", Estimator::GAN},
      {"kl", Estimator::KL},
      {"rkl", Estimator::RKL},
      {"h2", Estimator::H2},
      {"x2", Estimator::X2},
      {"w1", Estimator::W1},
      {"dv", Estimator::DV},
      {"infonce", Estimator::InfoNCE},
  }};
  for (const auto& [text, estimator] : kNames) {
    if (name == text) return estimator;
  }
  TORCH_CHECK_VALUE(false, "dim_fused: unknown estimator '", std::string(name),
                    "'; expected one of jsd, gan, kl, rkl, h2, x2, w1, dv, infonce");
}

void check_tunable(const char* op, const char* name, int64_t value) {
  TORCH_CHECK_VALUE(value >= 1, "dim_fused.", op, ": ", name, " must be at least 1, got ", value);
}

namespace {

// a (op) b with fp32 accumulation and the result in `out`: the ATen overload with
// an out_dtype (aten::mm.dtype, aten::bmm.dtype: cuBLAS writes float32 from half
// inputs) where this torch has one for CUDA; elsewhere the operands are converted.
template <typename Plain>
at::Tensor gemm_to(const char* op, const Plain& plain, const at::Tensor& a, const at::Tensor& b,
                   at::ScalarType out) {
  if (a.scalar_type() == out) return plain(a, b);
  if (a.is_cuda()) {
    static const auto with_dtype = c10::Dispatcher::singleton().findSchema({op, "dtype"});
    if (with_dtype && with_dtype->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) {
      return with_dtype->typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::ScalarType)>()
          .call(a, b, out);
    }
  }
  return plain(a.to(out), b.to(out));
}

}  // namespace

at::Tensor mm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  return gemm_to(
      "aten::mm", [](const at::Tensor& x, const at::Tensor& y) { return at::mm(x, y); }, a, b, out);
}

at::Tensor bmm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out) {
  return gemm_to(
      "aten::bmm", [](const at::Tensor& x, const at::Tensor& y) { return at::bmm(x, y); }, a, b,
      out);
}

}  // namespace dim_fused

// A bare module: importing dim_fused._C runs every op's registrations.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
