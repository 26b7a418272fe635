// mi_bound: the bound of critic scores. The checks every device runs, the problem its
// kernels see, and the registration of a device's kernels (one template for CPU and
// CUDA: they differ only in the kernels they plug in).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/common.h"

namespace dim_fused {

// The scores as the flat, contiguous problem the kernels read.
struct MiBoundProblem {
  at::Tensor pos;  // contiguous
  at::Tensor neg;  // contiguous
  int64_t num_negatives;
  Estimator estimator;
};
// The checks of the op's arguments (the Python layer gives friendlier messages first;
// these guard direct torch.ops callers).
MiBoundProblem check_mi_bound_inputs(const at::Tensor& pos, const at::Tensor& neg,
                                     c10::string_view estimator);
// The backward's incoming gradient: one element on the scores' device.
void check_mi_bound_grad(const at::Tensor& grad, const at::Tensor& pos);
// The forward's normaliser, when the backward is given one: one element of the scores'
// accumulation dtype on their device.
void check_mi_bound_normaliser(const std::optional<at::Tensor>& normaliser, const at::Tensor& pos);

template <typename scalar_t>
Scores<scalar_t> scores_of(const MiBoundProblem& p) {
  return Scores<scalar_t>{p.pos.const_data_ptr<scalar_t>(),
                          p.neg.const_data_ptr<scalar_t>(),
                          p.pos.numel(),
                          p.neg.numel(),
                          p.num_negatives,
                          p.estimator};
}

// What a device supplies: the estimate (a 0-dim tensor of the scores' dtype) with its
// normaliser (DV's logsumexp of the negatives, 0 for the other estimators: 0-dim, in the
// accumulation dtype), and the gradients of checked scores (DV's normaliser: the
// forward's when given, else recomputed).
struct MiBoundKernels {
  std::tuple<at::Tensor, at::Tensor> (*estimate)(const MiBoundProblem& p);
  std::tuple<at::Tensor, at::Tensor> (*gradient)(const at::Tensor& grad,
                                                 const std::optional<at::Tensor>& normaliser,
                                                 const MiBoundProblem& p);
};

template <const MiBoundKernels& kKernels>
std::tuple<at::Tensor, at::Tensor> mi_bound_op(const at::Tensor& pos, const at::Tensor& neg,
                                               c10::string_view estimator) {
  const MiBoundProblem p = check_mi_bound_inputs(pos, neg, estimator);
  const c10::DeviceGuard guard(pos.device());
  return kKernels.estimate(p);
}

template <const MiBoundKernels& kKernels>
std::tuple<at::Tensor, at::Tensor> mi_bound_backward_op(const at::Tensor& grad,
                                                        const at::Tensor& pos,
                                                        const at::Tensor& neg,
                                                        const std::optional<at::Tensor>& normaliser,
                                                        c10::string_view estimator) {
  const MiBoundProblem p = check_mi_bound_inputs(pos, neg, estimator);
  check_mi_bound_grad(grad, pos);
  check_mi_bound_normaliser(normaliser, pos);
  const c10::DeviceGuard guard(pos.device());
  return kKernels.gradient(grad, normaliser, p);
}

// In a TORCH_LIBRARY_IMPL(dim_fused, <device>, m) block.
template <const MiBoundKernels& kKernels>
void register_mi_bound(torch::Library& m) {
  m.impl("mi_bound", &mi_bound_op<kKernels>);
  m.impl("mi_bound_backward", &mi_bound_backward_op<kKernels>);
}

}  // namespace dim_fused
