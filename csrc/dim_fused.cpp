// Operator schemas of dim_fused and the Python module they load with. The
// CPU and CUDA kernels register themselves in csrc/cpu and csrc/cuda; fake
// kernels and autograd formulas are registered from dim_fused/_ops.py.
#include "dim_fused.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <vector>

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

MiBoundProblem check_mi_bound_inputs(const at::Tensor& pos, const at::Tensor& neg,
                                     c10::string_view estimator) {
  const Estimator e = parse_estimator(estimator);
  TORCH_CHECK_VALUE(pos.numel() > 0 && neg.numel() > 0,
                    "dim_fused.mi_bound: pos_scores and neg_scores must be non-empty");
  TORCH_CHECK_VALUE(at::isFloatingType(pos.scalar_type()),
                    "dim_fused.mi_bound: scores must be floating point, got ", pos.scalar_type());
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

void check_mi_bound_grad(const at::Tensor& grad, const at::Tensor& pos) {
  TORCH_CHECK_VALUE(
      grad.numel() == 1 && grad.device() == pos.device() && at::isFloatingType(grad.scalar_type()),
      "dim_fused.mi_bound_backward: grad must be one floating-point element on ", pos.device(),
      ", got ", grad.sizes(), " on ", grad.device());
}

DotProductProblem check_dot_product_inputs(const at::Tensor& local, const at::Tensor& global,
                                           c10::string_view estimator, bool official,
                                           int64_t positive_offset) {
  const Estimator e = parse_estimator(estimator);
  const char* op = "dim_fused.dot_product_mi: ";
  TORCH_CHECK_VALUE(local.dim() >= 3 && global.dim() == 2, op,
                    "local_codes must be (B, E, L) or (B, E, H, W) and global_codes (G, E); got ",
                    local.sizes(), " and ", global.sizes());
  TORCH_CHECK_VALUE(
      local.scalar_type() == global.scalar_type() && local.device() == global.device(), op,
      "local_codes and global_codes must share dtype and device");
  const int64_t batch = local.size(0), units = local.size(1), globals = global.size(0);
  TORCH_CHECK_VALUE(global.size(1) == units && batch >= 2 && local.numel() > 0, op,
                    "need B >= 2, at least one location and matching E, got local ", local.sizes(),
                    " and global ", global.sizes());
  TORCH_CHECK_VALUE(positive_offset >= 0 && positive_offset <= globals - batch, op,
                    "positive_offset must be in [0, G - B] = [0, ", globals - batch, "], got ",
                    positive_offset);
  TORCH_CHECK_VALUE(globals == batch || (e != Estimator::DV && e != Estimator::InfoNCE), op,
                    "dv and infonce need G == B");
  const at::Tensor flat = local.reshape({batch, units, -1});  // a view for dense layouts
  return {local,           flat,  global,       flat.transpose(1, 2).is_contiguous(),
          batch,           units, flat.size(2), globals,
          positive_offset, e,     official};
}

void check_dot_product_stats(const at::Tensor& grad, const at::Tensor& stats,
                             const DotProductProblem& p) {
  const auto acc = acc_dtype(p.local.scalar_type());
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == p.local.device(),
                    "dim_fused.dot_product_mi_backward: grad must be one element on ",
                    p.local.device());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == p.globals && stats.size(1) == 2 &&
                        stats.scalar_type() == acc && stats.device() == p.local.device(),
                    "dim_fused.dot_product_mi_backward: stats must be the forward's (G, 2) = (",
                    p.globals, ", 2) ", acc, " tensor, got ", stats.sizes(), " ",
                    stats.scalar_type());
}

int64_t DotProductProblem::tile_images() const {
  // DIM_FUSED_TILE_SCORES shrinks the tiles (tests use it to cross tile edges).
  const char* env = std::getenv("DIM_FUSED_TILE_SCORES");
  const int64_t fallback = local.is_cuda() ? int64_t(1) << 24 : int64_t(1) << 20;
  const int64_t tile_scores = env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : fallback;
  return std::clamp<int64_t>(tile_scores / (globals * locations), 1, batch);
}

namespace {

// Every index of perm must be in [0, B): checked here on the CPU (free: the data
// is on the host). On a GPU the check would cost a sync, so an index outside
// [0, B) becomes source -1 there instead (NaN scores, no stray memory access).
// Repeated indices are harmless on both: the scatters are correct for any map.
void check_perm_range_on_host(const at::Tensor& perm, int64_t batch) {
  const auto [low, high] = at::aminmax(perm);
  const int64_t lowest = low.item<int64_t>(), highest = high.item<int64_t>();
  TORCH_CHECK_VALUE(lowest >= 0 && highest < batch,
                    "dim_fused.concat_conv_mi: perm's indices must be in [0, ", batch, "), got ",
                    lowest < 0 ? lowest : highest);
}

}  // namespace

ConcatConvProblem check_concat_conv_inputs(const at::Tensor& feature_map,
                                           const at::Tensor& global_code, at::TensorList weights,
                                           at::TensorList biases, const at::Tensor& perm,
                                           c10::string_view estimator, bool detach_negatives,
                                           bool keep_activations) {
  const Estimator e = parse_estimator(estimator);
  const char* op = "dim_fused.concat_conv_mi: ";
  TORCH_CHECK_VALUE(feature_map.dim() >= 3 && global_code.dim() == 2 &&
                        global_code.size(0) == feature_map.size(0) && feature_map.size(0) >= 2,
                    op, "need feature_map (B >= 2, C, ...) and global_code (B, D), got ",
                    feature_map.sizes(), " and ", global_code.sizes());
  TORCH_CHECK_VALUE(feature_map.numel() > 0 && global_code.numel() > 0, op,
                    "need at least one channel, location and global unit, got feature_map ",
                    feature_map.sizes(), " and global_code ", global_code.sizes());
  TORCH_CHECK_VALUE(global_code.scalar_type() == feature_map.scalar_type() &&
                        global_code.device() == feature_map.device(),
                    op, "global_code must match feature_map's dtype and device");
  const int64_t batch = feature_map.size(0), channels = feature_map.size(1);
  TORCH_CHECK_VALUE(weights.size() >= 2 && biases.size() == weights.size(), op,
                    "need at least two layers and one bias entry per layer");
  int64_t width = channels + global_code.size(1);
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == width && w.size(0) >= 1, op, "weights[", i,
                      "] must be (out, ", width, "), got ", w.sizes());
    const at::Tensor& b = biases[i];  // empty: no bias
    TORCH_CHECK_VALUE(b.numel() == 0 || (b.dim() == 1 && b.size(0) == w.size(0)), op, "biases[", i,
                      "] must be (", w.size(0), ") or empty");
    for (const at::Tensor* t : {&w, &b}) {
      TORCH_CHECK_VALUE(
          t->scalar_type() == feature_map.scalar_type() && t->device() == feature_map.device(), op,
          "weights and biases must match feature_map's dtype and device");
    }
    width = w.size(0);
  }
  TORCH_CHECK_VALUE(width == 1, op, "the last layer must have one output");
  const at::Tensor flat = feature_map.reshape({batch, channels, -1});
  const int64_t locations = flat.size(2);
  TORCH_CHECK_VALUE(perm.dim() == 3 && perm.size(0) >= 1 && perm.size(1) == locations &&
                        perm.size(2) == batch && perm.scalar_type() == at::kLong &&
                        perm.device() == feature_map.device(),
                    op, "perm must be an int64 (K >= 1, L = ", locations, ", B = ", batch,
                    ") tensor on the feature map's device, got ", perm.scalar_type(), " ",
                    perm.sizes(), " on ", perm.device());
  if (perm.is_cpu()) check_perm_range_on_host(perm, batch);
  const int64_t k = perm.size(0);
  // Row b * L + l of negative k reads local row perm[k, l, b] * L + l.
  const at::Tensor rows = at::arange(batch * locations, perm.options());
  const at::Tensor in_range = perm.ge(0).logical_and(perm.lt(batch)).transpose(1, 2);
  const at::Tensor negatives =
      at::where(in_range, perm.transpose(1, 2) * locations + at::arange(locations, perm.options()),
                at::full({}, -1, perm.options()))
          .reshape({k, -1});
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
          detach_negatives,
          keep_activations};
}

void check_concat_conv_scores(const at::Tensor& grad, const at::Tensor& scores,
                              const ConcatConvProblem& p, at::TensorList activations) {
  const int64_t rows = (p.num_negatives + 1) * p.rows();
  TORCH_CHECK_VALUE(
      activations.empty() || activations.size() + 2 == p.weights.size(),
      "dim_fused.concat_conv_mi_backward: activations must be the forward's (one per hidden "
      "layer after the first) or none");
  for (size_t i = 0; i < activations.size(); ++i) {
    const at::Tensor& a = activations[i];
    TORCH_CHECK_VALUE(a.dim() == 2 && a.size(0) == rows && a.size(1) == p.weights[i + 1].size(0) &&
                          a.scalar_type() == p.local_rows.scalar_type() &&
                          a.device() == p.local_rows.device() && a.is_contiguous(),
                      "dim_fused.concat_conv_mi_backward: activations[", i,
                      "] must be the forward's (", rows, ", ", p.weights[i + 1].size(0),
                      ") tensor, got ", a.sizes());
  }
  const auto acc = acc_dtype(p.local_rows.scalar_type());
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == p.local_rows.device(),
                    "dim_fused.concat_conv_mi_backward: grad must be one element on ",
                    p.local_rows.device());
  TORCH_CHECK_VALUE(
      scores.dim() == 3 && scores.size(0) == p.num_negatives + 1 && scores.size(1) == p.batch &&
          scores.size(2) == p.locations && scores.scalar_type() == acc &&
          scores.device() == p.local_rows.device(),
      "dim_fused.concat_conv_mi_backward: scores must be the forward's (1 + K, B, L) = (",
      p.num_negatives + 1, ", ", p.batch, ", ", p.locations, ") ", acc, " tensor, got ",
      scores.sizes(), " ", scores.scalar_type());
}

int64_t ConcatConvProblem::chunk_images() const {
  // DIM_FUSED_CHUNK_VALUES shrinks the chunks (tests use it to cross chunk edges).
  const char* env = std::getenv("DIM_FUSED_CHUNK_VALUES");
  const int64_t fallback = local_rows.is_cuda() ? int64_t(1) << 22 : int64_t(1) << 18;
  const int64_t values = env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : fallback;
  int64_t widest = 1;
  for (const auto& w : weights) widest = std::max(widest, w.size(0));
  return std::clamp<int64_t>(values / (widest * locations), 1, batch);
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
  // The argument checks of the C++ kernels, for the Triton ones.
  m.def("check_mi_bound(Tensor pos_scores, Tensor neg_scores, str estimator, Tensor? grad) -> ()");
  m.def(
      "check_dot_product(Tensor local_codes, Tensor global_codes, str estimator, int "
      "positive_offset,"
      " Tensor? grad, Tensor? stats) -> ()");
  m.def(
      "concat_conv_mi_sources(Tensor feature_map, Tensor global_code, Tensor[] weights,"
      " Tensor[] biases, Tensor perm, str estimator, Tensor? grad, Tensor? scores) -> Tensor");
  // The statistics finish of dot_product_mi, for the Triton forward's partials.
  m.def(
      "dot_product_mi_finish(Tensor row_stats, Tensor positives, str estimator, bool official,"
      " int batch, int locations) -> (Tensor, Tensor)");
  m.def(
      "dot_product_mi_coefficients(Tensor grad, Tensor stats, str estimator, int batch,"
      " int locations) -> Tensor");
  m.def(
      "dot_product_mi_tile_backward(Tensor d_scores, Tensor local_codes, Tensor global_codes,"
      " int first, Tensor(a!) d_local, Tensor(b!) d_global) -> ()");
  m.def(
      "concat_conv_mi(Tensor feature_map, Tensor global_code, Tensor[] weights, Tensor[] biases,"
      " Tensor perm, str estimator, bool detach_negatives, bool keep_activations)"
      " -> (Tensor, Tensor, Tensor[])");
  m.def(
      "concat_conv_mi_backward(Tensor grad, Tensor feature_map, Tensor global_code,"
      " Tensor[] weights, Tensor[] biases, Tensor perm, Tensor scores, Tensor[] activations,"
      " str estimator, bool detach_negatives) -> (Tensor, Tensor, Tensor[], Tensor[])");
}

namespace {

// The lower layer's checks as ops, so that the Triton backend guards its kernels
// with the very checks the C++ kernels run (they read metadata only).
void check_mi_bound_op(const at::Tensor& pos, const at::Tensor& neg, c10::string_view estimator,
                       const std::optional<at::Tensor>& grad) {
  check_mi_bound_inputs(pos, neg, estimator);
  if (grad) check_mi_bound_grad(*grad, pos);
}

void dot_product_tile_backward_op(const at::Tensor& d_scores, const at::Tensor& local,
                                  const at::Tensor& global, int64_t first, at::Tensor& d_local,
                                  at::Tensor& d_global) {
  const DotProductProblem p = check_dot_product_inputs(local, global, "jsd", false, 0);
  const char* op = "dim_fused.dot_product_mi_tile_backward: ";
  const auto acc = acc_dtype(local.scalar_type());
  TORCH_CHECK_VALUE(
      d_scores.dim() == 2 && d_scores.size(0) == p.globals && d_scores.size(1) % p.locations == 0 &&
          first >= 0 && first <= p.batch - d_scores.size(1) / p.locations &&
          d_scores.scalar_type() == acc && d_scores.device() == local.device(),
      op, "d_scores must be a (G, images * L) ", acc, " tile of images within the batch");
  TORCH_CHECK_VALUE(
      d_local.sizes() == local.sizes() && d_local.scalar_type() == local.scalar_type() &&
          d_local.device() == local.device() && d_local.is_non_overlapping_and_dense(),
      op, "d_local must be a dense tensor like local_codes");
  TORCH_CHECK_VALUE(d_global.dim() == 2 && d_global.size(0) == p.globals &&
                        d_global.size(1) == p.units && d_global.scalar_type() == acc &&
                        d_global.device() == local.device(),
                    op, "d_global must be a (G, E) ", acc, " tensor");
  dot_product_tile_backward(p, d_scores.contiguous(), first, d_local, d_global);
}

// The checks of concat_conv_mi (and of its backward's grad and scores when given), and
// the row sources they produce: what the Triton backend needs of the C++ plan.
at::Tensor concat_conv_sources_op(const at::Tensor& feature_map, const at::Tensor& global_code,
                                  at::TensorList weights, at::TensorList biases,
                                  const at::Tensor& perm, c10::string_view estimator,
                                  const std::optional<at::Tensor>& grad,
                                  const std::optional<at::Tensor>& scores) {
  const ConcatConvProblem p =
      check_concat_conv_inputs(feature_map, global_code, weights, biases, perm, estimator, false);
  if (grad && scores) check_concat_conv_scores(*grad, *scores, p, {});
  return p.sources;
}

void check_dot_product_op(const at::Tensor& local, const at::Tensor& global,
                          c10::string_view estimator, int64_t positive_offset,
                          const std::optional<at::Tensor>& grad,
                          const std::optional<at::Tensor>& stats) {
  const DotProductProblem p =
      check_dot_product_inputs(local, global, estimator, false, positive_offset);
  if (grad && stats) check_dot_product_stats(*grad, *stats, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CompositeExplicitAutograd, m) {
  m.impl("check_mi_bound", &check_mi_bound_op);
  m.impl("check_dot_product", &check_dot_product_op);
  m.impl("concat_conv_mi_sources", &concat_conv_sources_op);
  m.impl("dot_product_mi_finish", &dot_product_mi_finish);
  m.impl("dot_product_mi_coefficients", &dot_product_mi_coefficients);
  m.impl("dot_product_mi_tile_backward", &dot_product_tile_backward_op);
}

}  // namespace dim_fused

// A bare module: importing dim_fused._C runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
