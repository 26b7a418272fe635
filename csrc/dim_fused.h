// Host-side helpers shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

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

// --- dot_product_mi: encode-and-dot scores streamed tile by tile ------------

// Scores u[i, (j, p)] = <global i, local (j, :, p)>; local image j's positive
// global is row offset + j.
struct DotProductProblem {
  at::Tensor local;   // (B, E, L), contiguous
  at::Tensor global;  // (G, E), contiguous
  int64_t batch, units, locations, globals, offset;
  Estimator estimator;
  bool official;

  int64_t positives() const { return batch * locations; }
  int64_t negatives() const { return (globals - 1) * batch * locations; }
  // Images per score tile: a tile holds G x images x L scores, ~4 MB in fp32.
  int64_t tile_images() const;
};
DotProductProblem check_dot_product_inputs(const at::Tensor& local, const at::Tensor& global,
                                           c10::string_view estimator, bool official,
                                           int64_t positive_offset);

// What a backend supplies: the work on one score tile, a (G, images * L)
// matrix for the images [first, first + images). The GEMMs around it are ATen's.
struct DotProductEpilogue {
  // Merges the tile into `rows` (G, 4) = (sum Ep, sum Eq, max, sum exp(x - max))
  // of each global row; InfoNCE's positive scores go to `positives` (B, L).
  void (*reduce)(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                 at::Tensor& rows, at::Tensor& positives);
  // Overwrites the tile with d(estimate)/d(score) from per-row coefficients
  // `coef` (G, 4) = (positive scale, negative scale, negative logsumexp, shift).
  void (*gradient)(const DotProductProblem& p, at::Tensor& tile, int64_t first,
                   const at::Tensor& coef);
};

// Returns (estimate, stats): stats (G, 2) are what the backward needs.
std::tuple<at::Tensor, at::Tensor> dot_product_mi_forward(const DotProductProblem& p,
                                                          const DotProductEpilogue& epilogue);
std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const DotProductEpilogue& epilogue);

// --- concat_conv_mi: the concat-and-conv critic, rows streamed in chunks -----

// Row r = b * L + l of pair set k' (k' = 0: positives, k' = k + 1: negative k)
// scores local vector sources[k'][r] (a row of `local_rows`) against global b.
struct ConcatConvProblem {
  at::Tensor local_rows;            // (B * L, C): row b * L + l is feature_map[b, :, l]
  at::Tensor global_code;           // (B, D)
  std::vector<at::Tensor> weights;  // 2-D (out, in), weights[0] in = C + D
  std::vector<std::optional<at::Tensor>> biases;  // (out,) or none (an empty tensor in the op)
  at::Tensor sources;                             // (1 + K, B * L) int64
  int64_t batch, locations, channels, num_negatives;
  Estimator estimator;
  c10::string_view estimator_name;
  bool detach_negatives;

  // Images per chunk of rows: a chunk's widest activation holds ~256 K values.
  int64_t chunk_images() const;
};
ConcatConvProblem check_concat_conv_inputs(const at::Tensor& feature_map,
                                           const at::Tensor& global_code, at::TensorList weights,
                                           at::TensorList biases, const at::Tensor& perm,
                                           c10::string_view estimator, bool detach_negatives);

// What a backend supplies around the ATen GEMMs.
struct ConcatConvKernels {
  // out[r] = relu(P[src[r]] + Q[(first_row + r) / L]): the first hidden layer of
  // a chunk of rows, the tiled concat never formed. out is (rows, H1).
  void (*first_layer)(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& src,
                      int64_t first_row, int64_t locations, at::Tensor& out);
  // dP[src[r]] += dZ[r]; src holds no index twice, so no atomics are needed.
  void (*scatter_rows)(at::Tensor& dP, const at::Tensor& dZ, const at::Tensor& src);
};

// (estimate, scores (1 + K, B, L)); the scores are what the backward needs.
std::tuple<at::Tensor, at::Tensor> concat_conv_mi_forward(const ConcatConvProblem& p,
                                                          const ConcatConvKernels& kernels);
// (d feature_map (B, C, L), d global_code, d weights, d biases (empty where none)).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
concat_conv_mi_backward(const at::Tensor& grad, const ConcatConvProblem& p,
                        const at::Tensor& scores, const ConcatConvKernels& kernels);

}  // namespace dim_fused
