// mi_bound's schemas and argument checks; the kernels are in cpu.cpp and cuda.cu.
#include "mi_bound.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

namespace dim_fused {

MiBoundProblem check_mi_bound_inputs(const at::Tensor& pos, const at::Tensor& neg,
                                     c10::string_view estimator) {
  const Estimator e = parse_estimator(estimator);
  TORCH_CHECK_VALUE(pos.numel() > 0 && neg.numel() > 0,
                    "dim_fused.mi_bound: pos_scores and neg_scores must be non-empty");
  check_floating("mi_bound", "pos_scores", pos);
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

void check_mi_bound_normaliser(const std::optional<at::Tensor>& normaliser, const at::Tensor& pos) {
  if (!normaliser) return;
  const auto acc = acc_dtype(pos.scalar_type());
  TORCH_CHECK_VALUE(
      normaliser->numel() == 1 && normaliser->device() == pos.device() &&
          normaliser->scalar_type() == acc,
      "dim_fused.mi_bound_backward: normaliser (the forward's second output) must be one ", acc,
      " element on ", pos.device(), ", got ", normaliser->scalar_type(), " ", normaliser->sizes(),
      " on ", normaliser->device());
}

namespace {

// The checks as an op, so that the Triton kernels are guarded by the very checks the
// C++ kernels run (they read metadata only).
void check_mi_bound_op(const at::Tensor& pos, const at::Tensor& neg, c10::string_view estimator,
                       const std::optional<at::Tensor>& grad,
                       const std::optional<at::Tensor>& normaliser) {
  check_mi_bound_inputs(pos, neg, estimator);
  if (grad) check_mi_bound_grad(*grad, pos);
  check_mi_bound_normaliser(normaliser, pos);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dim_fused, m) {
  // The normaliser: DV's logsumexp of the negatives (0 for the other estimators), kept for
  // the backward so that it does not reduce the negatives again.
  m.def("mi_bound(Tensor pos_scores, Tensor neg_scores, str estimator) -> (Tensor, Tensor)");
  m.def(
      "mi_bound_backward(Tensor grad, Tensor pos_scores, Tensor neg_scores, Tensor? normaliser,"
      " str estimator) -> (Tensor, Tensor)");
  m.def(
      "check_mi_bound(Tensor pos_scores, Tensor neg_scores, str estimator, Tensor? grad,"
      " Tensor? normaliser) -> ()");
}

TORCH_LIBRARY_IMPL(dim_fused, CompositeExplicitAutograd, m) {
  m.impl("check_mi_bound", &check_mi_bound_op);
}

}  // namespace dim_fused
