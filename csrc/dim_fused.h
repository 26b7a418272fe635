// Host-side helpers shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <string>

#include "estimators.h"

namespace dim_fused {

Estimator parse_estimator(c10::string_view name);

// The argument checks every backend repeats before launching: the Python layer
// gives friendlier messages first, these guard direct torch.ops callers.
// Returns the scores as the flat, contiguous problem the kernels read.
struct MiBoundProblem {
  at::Tensor pos;  // contiguous
  at::Tensor neg;  // contiguous
  int64_t num_negatives;
  Estimator estimator;
};
MiBoundProblem check_mi_bound_inputs(const at::Tensor& pos, const at::Tensor& neg,
                                     c10::string_view estimator);

template <typename scalar_t>
Scores<scalar_t> scores_of(const MiBoundProblem& p) {
  return Scores<scalar_t>{p.pos.const_data_ptr<scalar_t>(),
                          p.neg.const_data_ptr<scalar_t>(),
                          p.pos.numel(),
                          p.neg.numel(),
                          p.num_negatives,
                          p.estimator};
}

}  // namespace dim_fused
