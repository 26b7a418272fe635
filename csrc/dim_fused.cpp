// Operator schemas of dim_fused and the Python module they load with. The
// CPU and CUDA kernels register themselves in csrc/cpu and csrc/cuda; fake
// kernels and autograd formulas are registered from dim_fused/_ops.py.
#include "dim_fused.h"

#include <ATen/ATen.h>
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

ConcatConvProblem check_concat_conv_inputs(const at::Tensor& feature_map,
                                           const at::Tensor& global_code, at::TensorList weights,
                                           at::TensorList biases, const at::Tensor& perm,
                                           c10::string_view estimator, bool detach_negatives) {
  const Estimator e = parse_estimator(estimator);
  const char* op = "dim_fused.concat_conv_mi: ";
  TORCH_CHECK_VALUE(feature_map.dim() >= 3 && global_code.dim() == 2 &&
                        global_code.size(0) == feature_map.size(0) && feature_map.size(0) >= 2,
                    op, "need feature_map (B >= 2, C, ...) and global_code (B, D), got ",
                    feature_map.sizes(), " and ", global_code.sizes());
  const int64_t batch = feature_map.size(0), channels = feature_map.size(1);
  TORCH_CHECK_VALUE(weights.size() >= 2 && biases.size() == weights.size(), op,
                    "need at least two layers and one bias entry per layer");
  int64_t width = channels + global_code.size(1);
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == width, op, "weights[", i, "] must be (out, ",
                      width, "), got ", w.sizes());
    const at::Tensor& b = biases[i];  // empty: no bias
    TORCH_CHECK_VALUE(b.numel() == 0 || (b.dim() == 1 && b.size(0) == w.size(0)), op, "biases[", i,
                      "] must be (", w.size(0), ") or empty");
    TORCH_CHECK_VALUE(
        w.scalar_type() == feature_map.scalar_type() && w.device() == feature_map.device(), op,
        "weights must match feature_map's dtype and device");
    width = w.size(0);
  }
  TORCH_CHECK_VALUE(width == 1, op, "the last layer must have one output");
  const at::Tensor flat = feature_map.reshape({batch, channels, -1});
  const int64_t locations = flat.size(2);
  TORCH_CHECK_VALUE(perm.dim() == 3 && perm.size(1) == locations && perm.size(2) == batch &&
                        perm.scalar_type() == at::kLong && perm.device() == feature_map.device(),
                    op, "perm must be an int64 (K, L, B) tensor on the feature map's device");
  const int64_t k = perm.size(0);
  // Row b * L + l of negative k reads local row perm[k, l, b] * L + l.
  const at::Tensor rows = at::arange(batch * locations, perm.options());
  const at::Tensor negatives =
      (perm.transpose(1, 2) * locations + at::arange(locations, perm.options())).reshape({k, -1});
  std::vector<at::Tensor> weight_list(weights.begin(), weights.end());
  std::vector<std::optional<at::Tensor>> bias_list;
  for (const auto& b : biases) bias_list.push_back(b.numel() > 0 ? std::optional(b) : std::nullopt);
  return {flat.transpose(1, 2).reshape({batch * locations, channels}).contiguous(),
          global_code.contiguous(),
          std::move(weight_list),
          std::move(bias_list),
          at::cat({rows.unsqueeze(0), negatives}, 0),
          batch,
          locations,
          channels,
          k,
          e,
          estimator,
          detach_negatives};
}

int64_t ConcatConvProblem::chunk_images() const {
  // DIM_FUSED_CHUNK_VALUES shrinks the chunks (tests use it to cross chunk edges).
  const char* env = std::getenv("DIM_FUSED_CHUNK_VALUES");
  const int64_t values = env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : int64_t(1) << 18;
  int64_t widest = 1;
  for (const auto& w : weights) widest = std::max(widest, w.size(0));
  return std::clamp<int64_t>(values / (widest * locations), 1, batch);
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
  m.def(
      "concat_conv_mi(Tensor feature_map, Tensor global_code, Tensor[] weights, Tensor[] biases,"
      " Tensor perm, str estimator, bool detach_negatives) -> (Tensor, Tensor)");
  m.def(
      "concat_conv_mi_backward(Tensor grad, Tensor feature_map, Tensor global_code, Tensor[] "
      "weights,"
      " Tensor[] biases, Tensor perm, Tensor scores, str estimator, bool detach_negatives)"
      " -> (Tensor, Tensor, Tensor[], Tensor[])");
}

}  // namespace dim_fused

// A bare module: importing dim_fused._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
