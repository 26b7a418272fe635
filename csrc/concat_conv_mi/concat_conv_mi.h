// concat_conv_mi: the concat-and-conv critic's bound. The problem and its checks, the
// host plan every device shares (concat_conv_mi.cpp: the first layer's split, the row
// chunks, the backward's first-layer gradients), what a device plugs into it, and the
// registration of a device's pieces (one template for CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../common/common.h"

namespace dim_fused {

// Row r = b * L + l of pair set k' (k' = 0: positives, k' = k + 1: negative k)
// scores local vector sources[k'][r] (a row of `local_rows`) against global b.
struct ConcatConvProblem {
  at::Tensor local_rows;            // (B * L, C): row b * L + l is feature_map[b, :, l]
  at::Tensor global_code;           // (B, D)
  std::vector<at::Tensor> weights;  // 2-D (out, in), weights[0] in = C + D
  std::vector<std::optional<at::Tensor>> biases;  // (out,) or none (an empty tensor in the op)
  // (1 + K, B * L) int64; -1 where perm held an index outside [0, B) (the CUDA
  // kernels then write NaN instead of reading out of bounds; the CPU refuses it).
  at::Tensor sources;
  int64_t batch, locations, channels, num_negatives;
  Estimator estimator;
  c10::string_view estimator_name;
  bool detach_negatives;
  // Whether the forward returns every hidden layer's activations over all rows (what the
  // backward would otherwise recompute: P and Q, the first layer's gather and the later
  // layers' GEMMs); the caller decides under a memory budget.
  bool keep_activations;
  int64_t chunk_values;  // values of the widest layer per chunk of rows, at most

  int64_t rows() const { return batch * locations; }
  // Images per chunk of rows (at least one).
  int64_t chunk_images() const;
};
// The checks of the op's arguments (they read metadata only), then the problem's
// tensors, built once: the rows of the feature map and the row sources.
ConcatConvProblem concat_conv_problem(const at::Tensor& feature_map, const at::Tensor& global_code,
                                      at::TensorList weights, at::TensorList biases,
                                      const at::Tensor& perm, c10::string_view estimator,
                                      bool detach_negatives, bool keep_activations,
                                      int64_t chunk_values);
// The backward's grad (one element), the forward's scores (1 + K, B, L) and kept
// activations (none, or one per hidden layer, (1 + K) * B * L rows each).
void check_concat_conv_scores(const at::Tensor& grad, const at::Tensor& scores,
                              const ConcatConvProblem& p, at::TensorList activations);

// What a device supplies around the ATen GEMMs.
struct ConcatConvKernels {
  // out[r] = relu(P[src[r]] + Q[(first_row + r) / L]): the first hidden layer of
  // a chunk of rows, the tiled concat never formed. out is (rows, H1); a row
  // whose source is -1 becomes NaN.
  void (*first_layer)(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& src,
                      int64_t first_row, int64_t locations, at::Tensor& out);
  // The first layer's backward for a chunk of whole images [image, image + images):
  // dZ1 = dH1 * (H1 > 0), added into dP at each row's source (and into dP_features too
  // when given) and, summed over each image's rows, into dQ. Correct when src repeats an
  // index (a permutation never does: deterministic then); rows whose source is -1 are
  // left out.
  void (*first_layer_backward)(const at::Tensor& dH1, const at::Tensor& H1, const at::Tensor& src,
                               int64_t image, int64_t locations, at::Tensor& dP,
                               at::Tensor* dP_features, at::Tensor& dQ);
  // Optional (nullptr: the plan adds the bias to the GEMM's output, applies ReLU and scores
  // with ATen ops, three passes): a later hidden layer's epilogue in one pass over a chunk's
  // plain product z (rows, H), contiguous: z = relu(z + bias) in place and, when `weight` is
  // defined, scores[r] = <z[r], weight> (the score layer, before its bias). bias, weight
  // (H,) and scores (rows,) are in the accumulation dtype; the ReLU keeps a NaN.
  void (*hidden_epilogue)(at::Tensor& z, const at::Tensor& bias, const at::Tensor& weight,
                          at::Tensor& scores);
  // Optional (nullptr: ATen GEMMs and passes): the score layer's backward for a chunk, one
  // pass over its last hidden layer h (rows, H): d_weight (H,) += sum_r d_score[r] h[r];
  // d_h[r] = d_score[r] weight, 0 where h[r] <= 0 (the gradient before that layer's ReLU,
  // written in h's dtype); d_bias (H,) += sum_r d_h[r] (that layer's bias; empty: none).
  // d_score (rows,), weight, d_weight and d_bias are in the accumulation dtype.
  void (*score_backward)(const at::Tensor& h, const at::Tensor& d_score, const at::Tensor& weight,
                         at::Tensor& d_weight, at::Tensor& d_bias, at::Tensor& d_h);
};

// (estimate, scores (1 + K, B, L) in the accumulation dtype, kept tensors when
// keep_activations, else none: every hidden layer's activations over all (1 + K) B L rows):
// what the backward needs.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> concat_conv_mi_forward(
    const ConcatConvProblem& p, const ConcatConvKernels& kernels);
// (d feature_map (B, C, L), d global_code, d weights, d biases (empty where none)).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
concat_conv_mi_backward(const at::Tensor& grad, const ConcatConvProblem& p,
                        const at::Tensor& scores, at::TensorList activations,
                        const ConcatConvKernels& kernels);

template <const ConcatConvKernels& kKernels>
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> concat_conv_mi_op(
    const at::Tensor& feature_map, const at::Tensor& global_code, at::TensorList weights,
    at::TensorList biases, const at::Tensor& perm, c10::string_view estimator,
    bool detach_negatives, bool keep_activations, int64_t chunk_values) {
  const c10::DeviceGuard guard(feature_map.device());
  return concat_conv_mi_forward(
      concat_conv_problem(feature_map, global_code, weights, biases, perm, estimator,
                          detach_negatives, keep_activations, chunk_values),
      kKernels);
}

template <const ConcatConvKernels& kKernels>
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
concat_conv_mi_backward_op(const at::Tensor& grad, const at::Tensor& feature_map,
                           const at::Tensor& global_code, at::TensorList weights,
                           at::TensorList biases, const at::Tensor& perm, const at::Tensor& scores,
                           at::TensorList activations, c10::string_view estimator,
                           bool detach_negatives, int64_t chunk_values) {
  const c10::DeviceGuard guard(feature_map.device());
  const ConcatConvProblem p = concat_conv_problem(feature_map, global_code, weights, biases, perm,
                                                  estimator, detach_negatives, false, chunk_values);
  check_concat_conv_scores(grad, scores, p, activations);
  auto result = concat_conv_mi_backward(grad, p, scores, activations, kKernels);
  std::get<0>(result) = std::get<0>(result).view(feature_map.sizes());
  return result;
}

// In a TORCH_LIBRARY_IMPL(dim_fused, <device>, m) block.
template <const ConcatConvKernels& kKernels>
void register_concat_conv_mi(torch::Library& m) {
  m.impl("concat_conv_mi", &concat_conv_mi_op<kKernels>);
  m.impl("concat_conv_mi_backward", &concat_conv_mi_backward_op<kKernels>);
}

}  // namespace dim_fused
