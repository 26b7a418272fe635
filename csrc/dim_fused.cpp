// Operator schemas of dim_fused and the Python module they load with. The
// CPU and CUDA kernels register themselves in csrc/cpu and csrc/cuda; fake
// kernels and autograd formulas are registered from dim_fused/_ops.py.
#include "dim_fused.h"

#include <Python.h>
#include <torch/library.h>

#include <array>

namespace dim_fused {

Estimator parse_estimator(c10::string_view name) {
  static const std::array<const char*, 9> names = {"jsd", "gan", "kl", "rkl",    "h2",
                                                   "x2",  "w1",  "dv", "infonce"};
  for (size_t i = 0; i < names.size(); ++i) {
    if (name == names[i]) return static_cast<Estimator>(i);
  }
  TORCH_CHECK_VALUE(false, "dim_fused: unknown estimator '", std::string(name),
                    "'; expected one of jsd, gan, kl, rkl, h2, x2, w1, dv, infonce");
}

MiBoundProblem check_mi_bound_inputs(const at::Tensor& pos, const at::Tensor& neg,
                                     c10::string_view estimator) {
  const Estimator e = parse_estimator(estimator);
  TORCH_CHECK_VALUE(pos.numel() > 0 && neg.numel() > 0,
                    "dim_fused.mi_bound: pos_scores and neg_scores must be non-empty");
  TORCH_CHECK_VALUE(pos.scalar_type() == neg.scalar_type(),
                    "dim_fused.mi_bound: pos_scores and neg_scores must share a dtype, got ",
                    pos.scalar_type(), " and ", neg.scalar_type());
  TORCH_CHECK_VALUE(pos.device() == neg.device(),
                    "dim_fused.mi_bound: pos_scores and neg_scores must be on one device, got ",
                    pos.device(), " and ", neg.device());
  int64_t num_negatives = 0;
  if (e == Estimator::InfoNCE) {
    TORCH_CHECK_VALUE(neg.dim() == pos.dim() + 1 && neg.sizes().slice(1) == pos.sizes(),
                      "dim_fused.mi_bound: infonce needs neg_scores of shape (K, *", pos.sizes(),
                      "), got ", neg.sizes());
    num_negatives = neg.size(0);
  }
  return {pos.contiguous(), neg.contiguous(), num_negatives, e};
}

TORCH_LIBRARY(dim_fused, m) {
  m.def("mi_bound(Tensor pos_scores, Tensor neg_scores, str estimator) -> Tensor");
  m.def(
      "mi_bound_backward(Tensor grad, Tensor pos_scores, Tensor neg_scores, str estimator)"
      " -> (Tensor, Tensor)");
}

}  // namespace dim_fused

// A bare module: importing dim_fused._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
