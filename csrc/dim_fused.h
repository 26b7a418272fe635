// Host-side helpers shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "estimators.h"

namespace dim_fused {

Estimator parse_estimator(c10::string_view name);

// Held by every plan: the ATen calls inside a kernel are not autocast again (the plans
// choose their GEMMs' dtypes themselves; under torch.autocast the op's inputs already
// are in autocast's dtype).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

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
// The backward's incoming gradient: one element on the scores' device.
void check_mi_bound_grad(const at::Tensor& grad, const at::Tensor& pos);

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

// Scores u[i, c] = <global i, rows c> for the B * L columns c = j * L + p (local
// image j, location p); local image j's positive global is row offset + j.
struct DotProductProblem {
  at::Tensor local_codes;  // as given (the gradient takes their shape and layout)
  at::Tensor local;        // (B, E, L): a view of local_codes, whatever their strides
  at::Tensor global;       // (G, E)
  // Whether the units are innermost (channels-last codes, what the encode-and-dot
  // critic produces): then rows() is a view and a tile is one GEMM; otherwise a
  // tile is a batched GEMM over its images, each (E, L) matrix read in place.
  bool rows_layout;
  int64_t batch, units, locations, globals, offset;
  Estimator estimator;
  bool official;

  // (B * L, E): row j * L + p is local[j, :, p] (a view when rows_layout).
  at::Tensor rows() const { return local.transpose(1, 2).reshape({-1, units}); }
  int64_t columns() const { return batch * locations; }
  int64_t positives() const { return batch * locations; }
  int64_t negatives() const { return (globals - 1) * batch * locations; }
  // Images per score tile: a tile holds G x images x L scores in the accumulation
  // dtype, about 2^20 on a CPU and 2^24 on a GPU (DIM_FUSED_TILE_SCORES overrides).
  int64_t tile_images() const;
};
DotProductProblem check_dot_product_inputs(const at::Tensor& local, const at::Tensor& global,
                                           c10::string_view estimator, bool official,
                                           int64_t positive_offset);

// The backward's grad (one element) and stats (G, 2) in the accumulation dtype.
void check_dot_product_stats(const at::Tensor& grad, const at::Tensor& stats,
                             const DotProductProblem& p);

// Where a (G, n) tile of scores sits: its columns are [first, first + n).
struct ScoreTile {
  int64_t first, columns, locations, offset;
  Estimator estimator;

  // The tile's columns [begin, end) that hold `row`'s positives (empty if none).
  DIM_HD void positive_columns(int64_t row, int64_t& begin, int64_t& end) const {
    const int64_t start = (row - offset) * locations - first;
    begin = start < 0 ? 0 : (start > columns ? columns : start);
    const int64_t stop = start + locations;
    end = stop < 0 ? 0 : (stop > columns ? columns : stop);
  }
};
inline ScoreTile score_tile(const DotProductProblem& p, int64_t first, int64_t columns) {
  return {first, columns, p.locations, p.offset, p.estimator};
}

// What a backend supplies: the work on one (G, n) tile of scores, in the
// accumulation dtype (float32 for half inputs). The GEMMs around it are ATen's.
struct DotProductEpilogue {
  // Merges the tile into `row_stats` (G, kRowStats); InfoNCE's positive scores go
  // to `positives` (B * L).
  void (*reduce)(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                 at::Tensor& row_stats, at::Tensor& positives);
  // Overwrites the tile with d(estimate)/d(score), times the gradient scale the
  // coefficients carry (see dot_product_mi_coefficients), from coef (G, kCoefs).
  void (*gradient)(const DotProductProblem& p, at::Tensor& tile, int64_t first,
                   const at::Tensor& coef);
};

// (estimate, stats (G, 2)): stats are what the backward needs.
std::tuple<at::Tensor, at::Tensor> dot_product_mi_forward(const DotProductProblem& p,
                                                          const DotProductEpilogue& epilogue);
// (d local_codes, laid out like them; d global_codes).
std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const DotProductEpilogue& epilogue);
// The tile's (G, images * L) scores (images [first, first + images)) in the
// accumulation dtype.
at::Tensor dot_product_score_tile(const DotProductProblem& p, int64_t first, int64_t images);
// From a tile of d(estimate)/d(score) (accumulation dtype, times the gradient
// scale): d_local's images [first, first + images) (d_local laid out like
// local_codes) and d_global (G, E), accumulation dtype, += its share.
void dot_product_tile_backward(const DotProductProblem& p, const at::Tensor& d_scores,
                               int64_t first, at::Tensor& d_local, at::Tensor& d_global);
// Shared with the Triton backend (registered as ops). The statistics finish:
// row_stats (G, S, kRowStats) holds S partial Totals per global row.
std::tuple<at::Tensor, at::Tensor> dot_product_mi_finish(const at::Tensor& row_stats,
                                                         const at::Tensor& positives,
                                                         c10::string_view estimator, bool official,
                                                         int64_t batch, int64_t locations);
// The backward's per-row coefficients (G, kCoefs), times the gradient scale B * L.
// With dot_product_mi_tile_backward (the op of dot_product_tile_backward), what a
// backend needs that computes its gradient tiles itself.
at::Tensor dot_product_mi_coefficients(const at::Tensor& grad, const at::Tensor& stats,
                                       c10::string_view estimator, int64_t batch,
                                       int64_t locations);

// --- concat_conv_mi: the concat-and-conv critic, rows streamed in chunks -----

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
  // Whether the forward returns the hidden activations after the first layer (what the
  // backward would otherwise recompute with GEMMs); the caller decides under a memory budget.
  bool keep_activations;

  int64_t rows() const { return batch * locations; }
  // Images per chunk of rows: a chunk's widest activation holds 2^18 values on a
  // CPU, 2^22 on a GPU (DIM_FUSED_CHUNK_VALUES overrides).
  int64_t chunk_images() const;
};
ConcatConvProblem check_concat_conv_inputs(const at::Tensor& feature_map,
                                           const at::Tensor& global_code, at::TensorList weights,
                                           at::TensorList biases, const at::Tensor& perm,
                                           c10::string_view estimator, bool detach_negatives,
                                           bool keep_activations = false);
// The backward's grad (one element), the forward's scores (1 + K, B, L) and kept
// activations (none, or one per hidden layer after the first).
void check_concat_conv_scores(const at::Tensor& grad, const at::Tensor& scores,
                              const ConcatConvProblem& p, at::TensorList activations);

// What a backend supplies around the ATen GEMMs.
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
};

// (estimate, scores (1 + K, B, L) in the accumulation dtype, the activations of
// hidden layers 2.. over all (1 + K) B L rows when keep_activations, else none): what
// the backward needs.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> concat_conv_mi_forward(
    const ConcatConvProblem& p, const ConcatConvKernels& kernels);
// (d feature_map (B, C, L), d global_code, d weights, d biases (empty where none)).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
concat_conv_mi_backward(const at::Tensor& grad, const ConcatConvProblem& p,
                        const at::Tensor& scores, at::TensorList activations,
                        const ConcatConvKernels& kernels);

// --- shared -------------------------------------------------------------------

// bmm with the result in `out` dtype (see mm_to).
at::Tensor bmm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out);

// a @ b in `out` dtype with fp32 accumulation: cuBLAS writes float32 from half
// inputs directly where ATen has aten::mm.dtype; elsewhere the operands are
// converted first.
at::Tensor mm_to(const at::Tensor& a, const at::Tensor& b, at::ScalarType out);

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace dim_fused
