// dot_product_mi: the encode-and-dot critic's bound, scored tile by tile. The problem
// and its checks, the tile plan every device shares (dot_product_mi.cpp), what a
// device plugs into it, and the registration of a device's pieces (one template for
// CPU and CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/common.h"

namespace dim_fused {

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
  int64_t tile_scores;  // scores per tile at most (whole images: at least one image)

  // (B * L, E): row j * L + p is local[j, :, p] (a view when rows_layout).
  at::Tensor rows() const { return local.transpose(1, 2).reshape({-1, units}); }
  int64_t columns() const { return batch * locations; }
  int64_t positives() const { return batch * locations; }
  int64_t negatives() const { return (globals - 1) * batch * locations; }
  // Images per score tile: G x images x L scores in the accumulation dtype.
  int64_t tile_images() const;
};
// The checks of the op's arguments; they read metadata only (the views are free).
// Any G >= B for every estimator: the per-row statistics and the backward are defined
// for gathered globals (the ranks' merge finishes them, dim_fused/ops/dot_product_mi/
// across_ranks.py); check_finishable says whether this process alone can finish them.
DotProductProblem check_dot_product_inputs(const at::Tensor& local, const at::Tensor& global,
                                           c10::string_view estimator, bool official,
                                           int64_t positive_offset, int64_t tile_scores);
// DV's and InfoNCE's normalisers couple every row: one process finishes them only when
// it holds the whole batch (G == B).
void check_finishable(const DotProductProblem& p);
// The backward's grad (one element) and stats (G, 2) in the accumulation dtype, and the
// forward's kept scores if given: (G, B * L) in the accumulation dtype.
void check_dot_product_stats(const at::Tensor& grad, const at::Tensor& stats,
                             const std::optional<at::Tensor>& scores, const DotProductProblem& p);

// The columns of a global row's totals (dot_product_mi_statistics): the sums of Ep over
// its positives and of Eq over its negatives, and its negatives' logsumexp (-inf if
// none). dim_fused/ops/dot_product_mi/across_ranks.py reads them by these positions.
enum RowTotal : int { kTotalPos, kTotalNeg, kTotalNegLse, kTotals };

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

// What a device supplies: the work on one (G, n) tile of scores, in the
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

// (totals (G, kTotals): each global row's statistics over this process's local images;
// positives (B * L): InfoNCE's positive scores, empty for the other estimators).
std::tuple<at::Tensor, at::Tensor> dot_product_mi_statistics(const DotProductProblem& p,
                                                             const DotProductEpilogue& epilogue);
// (estimate, stats (G, 2), scores): stats are what the backward needs; scores, the (G, B * L)
// tile when keep_scores and the forward scored it as one tile (the backward then reads it
// instead of computing it again: a third of its GEMM work), else empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_product_mi_forward(
    const DotProductProblem& p, const DotProductEpilogue& epilogue, bool keep_scores);
// (d local_codes, laid out like them; d global_codes). `scores`: the forward's kept ones, or
// none (empty or absent): recomputed tile by tile.
std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const std::optional<at::Tensor>& scores,
                                                           const DotProductEpilogue& epilogue);

template <const DotProductEpilogue& kEpilogue>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_product_mi_op(
    const at::Tensor& local, const at::Tensor& global, c10::string_view estimator, bool official,
    int64_t positive_offset, int64_t tile_scores, bool keep_scores) {
  const DotProductProblem p =
      check_dot_product_inputs(local, global, estimator, official, positive_offset, tile_scores);
  check_finishable(p);
  const c10::DeviceGuard guard(local.device());
  return dot_product_mi_forward(p, kEpilogue, keep_scores);
}

template <const DotProductEpilogue& kEpilogue>
std::tuple<at::Tensor, at::Tensor> dot_product_mi_statistics_op(const at::Tensor& local,
                                                                const at::Tensor& global,
                                                                c10::string_view estimator,
                                                                int64_t positive_offset,
                                                                int64_t tile_scores) {
  const DotProductProblem p =
      check_dot_product_inputs(local, global, estimator, false, positive_offset, tile_scores);
  const c10::DeviceGuard guard(local.device());
  return dot_product_mi_statistics(p, kEpilogue);
}

template <const DotProductEpilogue& kEpilogue>
std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward_op(
    const at::Tensor& grad, const at::Tensor& local, const at::Tensor& global,
    const at::Tensor& stats, c10::string_view estimator, bool official, int64_t positive_offset,
    int64_t tile_scores, const std::optional<at::Tensor>& scores) {
  const DotProductProblem p =
      check_dot_product_inputs(local, global, estimator, official, positive_offset, tile_scores);
  check_dot_product_stats(grad, stats, scores, p);
  const c10::DeviceGuard guard(local.device());
  return dot_product_mi_backward(grad, p, stats, scores, kEpilogue);
}

// In a TORCH_LIBRARY_IMPL(dim_fused, <device>, m) block.
template <const DotProductEpilogue& kEpilogue>
void register_dot_product_mi(torch::Library& m) {
  m.impl("dot_product_mi", &dot_product_mi_op<kEpilogue>);
  m.impl("dot_product_mi_backward", &dot_product_mi_backward_op<kEpilogue>);
  m.impl("dot_product_mi_statistics", &dot_product_mi_statistics_op<kEpilogue>);
}

}  // namespace dim_fused
