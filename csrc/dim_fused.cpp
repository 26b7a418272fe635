// Operator schemas of dim_fused and the Python module they load with. The
// CPU and CUDA kernels register themselves in csrc/cpu and csrc/cuda; fake
// kernels and autograd formulas are registered from dim_fused/_ops.py.
#include "dim_fused.h"

#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>

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

DotProductProblem check_dot_product_inputs(const at::Tensor& local, const at::Tensor& global,
                                           c10::string_view estimator, bool official,
                                           int64_t positive_offset) {
  const Estimator e = parse_estimator(estimator);
  TORCH_CHECK_VALUE(local.dim() >= 3 && global.dim() == 2,
                    "dim_fused.dot_product_mi: local_codes must be (B, E, L) or (B, E, H, W) and "
                    "global_codes (G, E); got ",
                    local.sizes(), " and ", global.sizes());
  TORCH_CHECK_VALUE(
      local.scalar_type() == global.scalar_type() && local.device() == global.device(),
      "dim_fused.dot_product_mi: local_codes and global_codes must share dtype and "
      "device");
  const int64_t batch = local.size(0), units = local.size(1), globals = global.size(0);
  TORCH_CHECK_VALUE(global.size(1) == units && batch >= 2 && local.numel() > 0,
                    "dim_fused.dot_product_mi: need B >= 2 and matching E, got local ",
                    local.sizes(), " and global ", global.sizes());
  TORCH_CHECK_VALUE(positive_offset >= 0 && positive_offset + batch <= globals,
                    "dim_fused.dot_product_mi: positive_offset + B must be <= G");
  TORCH_CHECK_VALUE(globals == batch || (e != Estimator::DV && e != Estimator::InfoNCE),
                    "dim_fused.dot_product_mi: dv and infonce need G == B");
  at::Tensor flat = local.reshape({batch, units, -1}).contiguous();
  return {flat,    global.contiguous(), batch, units,   flat.size(2),
          globals, positive_offset,     e,     official};
}

int64_t DotProductProblem::tile_images() const {
  // DIM_FUSED_TILE_SCORES shrinks the tiles (tests use it to cross tile edges).
  const char* env = std::getenv("DIM_FUSED_TILE_SCORES");
  const int64_t tile_scores =
      env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : int64_t(1) << 20;
  return std::clamp<int64_t>(tile_scores / (globals * locations), 1, batch);
}

TORCH_LIBRARY(dim_fused, m) {
  m.def("mi_bound(Tensor pos_scores, Tensor neg_scores, str estimator) -> Tensor");
  m.def(
      "mi_bound_backward(Tensor grad, Tensor pos_scores, Tensor neg_scores, str estimator)"
      " -> (Tensor, Tensor)");
  m.def(
      "dot_product_mi(Tensor local_codes, Tensor global_codes, str estimator, bool official,"
      " int positive_offset) -> (Tensor, Tensor)");
  m.def(
      "dot_product_mi_backward(Tensor grad, Tensor local_codes, Tensor global_codes, Tensor stats,"
      " str estimator, bool official, int positive_offset) -> (Tensor, Tensor)");
}

}  // namespace dim_fused

// A bare module: importing dim_fused._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
