// dot_product_mi's schemas, argument checks and tile plan, shared by the CPU and CUDA
// backends; the Triton backend shares the checks and, for the merge across ranks, the row
// totals (registered as ops). ATen GEMMs compute a (G, n) tile of scores for the
// n = images x L columns of a group of images, in the accumulation dtype, reading the
// codes in their own layout (one GEMM for channels-last codes, a batched GEMM over the
// images' (E, L) matrices otherwise); the device's epilogue reduces it (forward) or
// turns it into d(estimate)/d(score) (backward, recomputing the tile); the per-row
// statistics are finished with ATen ops on the device. Memory: one tile plus
// O(B L + G E). See docs/design.md ("Encode-and-dot").
#include "dot_product_mi.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "../common/host_buffers.h"

namespace dim_fused {

DotProductProblem check_dot_product_inputs(const at::Tensor& local, const at::Tensor& global,
                                           c10::string_view estimator, bool official,
                                           int64_t positive_offset, int64_t tile_scores) {
  const Estimator e = parse_estimator(estimator);
  const char* op = "dim_fused.dot_product_mi: ";
  TORCH_CHECK_VALUE(local.dim() >= 3 && global.dim() == 2, op,
                    "local_codes must be (B, E, L) or (B, E, H, W) and global_codes (G, E); got ",
                    local.sizes(), " and ", global.sizes());
  TORCH_CHECK_VALUE(
      local.scalar_type() == global.scalar_type() && local.device() == global.device(), op,
      "local_codes and global_codes must share dtype and device");
  check_floating("dot_product_mi", "local_codes", local);
  const int64_t batch = local.size(0), units = local.size(1), globals = global.size(0);
  TORCH_CHECK_VALUE(global.size(1) == units && batch >= 2 && local.numel() > 0, op,
                    "need B >= 2, at least one location and matching E, got local ", local.sizes(),
                    " and global ", global.sizes());
  TORCH_CHECK_VALUE(positive_offset >= 0 && positive_offset <= globals - batch, op,
                    "positive_offset must be in [0, G - B] = [0, ", globals - batch, "], got ",
                    positive_offset);
  check_tunable("dot_product_mi", "tile_scores", tile_scores);
  const at::Tensor flat = local.reshape({batch, units, -1});  // a view for dense layouts
  return {local,           flat,  global,       flat.transpose(1, 2).is_contiguous(),
          batch,           units, flat.size(2), globals,
          positive_offset, e,     official,     tile_scores};
}

void check_finishable(const DotProductProblem& p) {
  TORCH_CHECK_VALUE(
      p.globals == p.batch || (p.estimator != Estimator::DV && p.estimator != Estimator::InfoNCE),
      "dim_fused.dot_product_mi: dv and infonce need G == B (globals gathered from "
      "other ranks are merged by dot_product_mi(..., across_ranks=True))");
}

void check_dot_product_stats(const at::Tensor& grad, const at::Tensor& stats,
                             const std::optional<at::Tensor>& scores, const DotProductProblem& p) {
  const auto acc = acc_dtype(p.local.scalar_type());
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == p.local.device(),
                    "dim_fused.dot_product_mi_backward: grad must be one element on ",
                    p.local.device());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == p.globals && stats.size(1) == 2 &&
                        stats.scalar_type() == acc && stats.device() == p.local.device(),
                    "dim_fused.dot_product_mi_backward: stats must be the forward's (G, 2) = (",
                    p.globals, ", 2) ", acc, " tensor, got ", stats.sizes(), " ",
                    stats.scalar_type());
  if (!scores || scores->numel() == 0) return;
  TORCH_CHECK_VALUE(
      scores->dim() == 2 && scores->size(0) == p.globals && scores->size(1) == p.columns() &&
          scores->is_contiguous() && scores->scalar_type() == acc &&
          scores->device() == p.local.device(),
      "dim_fused.dot_product_mi_backward: scores must be the forward's kept (G, B * L) = (",
      p.globals, ", ", p.columns(), ") contiguous ", acc, " tensor or empty, got ", scores->sizes(),
      " ", scores->scalar_type());
}

int64_t DotProductProblem::tile_images() const {
  return std::clamp<int64_t>(tile_scores / (globals * locations), 1, batch);
}

namespace {

// The per-row coefficients of the gradient epilogue, (G, kCoefs), times `scale`.
at::Tensor coefficients(const at::Tensor& grad, const at::Tensor& stats, Estimator e, int64_t batch,
                        int64_t locations, double scale) {
  const char* op = "dim_fused.dot_product_mi_coefficients: ";
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == stats.device(), op,
                    "grad must be one element on ", stats.device());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(1) == 2 && stats.size(0) >= batch &&
                        batch >= 2 && locations >= 1,
                    op, "need stats (G >= B, 2) for B = ", batch, ", got ", stats.sizes());
  const int64_t globals = stats.size(0);
  const double positives = double(batch * locations);
  const at::Tensor g = (grad.to(stats.scalar_type()) * scale).reshape({}).expand({globals});
  at::Tensor coef = at::zeros({globals, kCoefs}, stats.options());
  coef.select(1, kPosScale).copy_(g);
  switch (e) {
    case Estimator::InfoNCE:
      coef.select(1, kNegScale).copy_(g);
      coef.select(1, kNegLse).copy_(stats.select(1, 0));
      coef.select(1, kShift).copy_(stats.select(1, 1));
      break;
    case Estimator::DV:
      coef.select(1, kNegScale).copy_(g * positives);
      coef.select(1, kNegLse).copy_(stats.select(1, 0));
      break;
    default: coef.select(1, kNegScale).copy_(g / double(globals - 1));  // (B L) / #negatives
  }
  return coef;
}

// Each row's S partial statistics (G, S, kRowStats) merged into its totals (G, kTotals):
// each split's negatives as a logsumexp (see LogSumExp), then merged over the splits.
at::Tensor row_totals(const at::Tensor& row_stats) {
  TORCH_CHECK_VALUE(row_stats.dim() == 3 && row_stats.size(2) == kRowStats,
                    "dim_fused.dot_product_mi: row statistics must be (G, S, ", int(kRowStats),
                    "), got ", row_stats.sizes());
  const at::Tensor max = row_stats.select(2, kNegMax);
  const at::Tensor shift = at::where(at::isfinite(max), max, at::zeros_like(max));
  const at::Tensor neg_lse = at::logsumexp(shift + row_stats.select(2, kNegSumExp).log(), {1});
  return at::stack(
      {row_stats.select(2, kPosSum).sum(1), row_stats.select(2, kNegSum).sum(1), neg_lse}, 1);
}

std::tuple<at::Tensor, at::Tensor> finish(const at::Tensor& row_stats, const at::Tensor& positives,
                                          Estimator e, bool official, int64_t batch,
                                          int64_t locations) {
  const char* op = "dim_fused.dot_product_mi_finish: ";
  TORCH_CHECK_VALUE(row_stats.dim() == 3 && row_stats.size(2) == kRowStats && batch >= 2 &&
                        locations >= 1 && row_stats.size(0) >= batch,
                    op, "need row_stats (G >= B, S, ", int(kRowStats), ") for B = ", batch,
                    ", got ", row_stats.sizes());
  const at::Tensor totals = row_totals(row_stats);
  TORCH_CHECK_VALUE(positives.numel() == batch * locations &&
                        positives.scalar_type() == row_stats.scalar_type() &&
                        positives.device() == row_stats.device(),
                    op, "positives must hold B * L = ", batch * locations,
                    " scores of row_stats' dtype and device");
  const int64_t globals = row_stats.size(0);
  const double num_pos = double(batch * locations), num_neg = double((globals - 1) * num_pos);
  const at::Tensor neg_lse = totals.select(1, kTotalNegLse);
  at::Tensor stats = at::zeros({globals, 2}, row_stats.options());
  at::Tensor estimate;
  if (e == Estimator::InfoNCE) {
    at::Tensor row_lse = neg_lse;
    if (official) {  // the official code keeps the L self pairs at score -10
      row_lse = at::logaddexp(row_lse, at::full_like(row_lse, -10.0 + std::log(double(locations))));
    }
    const at::Tensor pos = positives.reshape({batch, locations});
    const at::Tensor candidates_lse = at::logaddexp(pos, row_lse.unsqueeze(1));
    estimate = (pos - candidates_lse).mean();
    if (!official) estimate = estimate + std::log1p(double((batch - 1) * locations));
    stats.select(1, 0).copy_(row_lse);
    stats.select(1, 1).copy_(at::logsumexp(row_lse.unsqueeze(1) - candidates_lse, {1}));
  } else {
    const at::Tensor pos_mean = totals.select(1, kTotalPos).sum() / num_pos;
    if (e == Estimator::DV) {
      const at::Tensor lse = at::logsumexp(neg_lse, {0});
      estimate = pos_mean - (lse - std::log(num_neg));
      if (official) estimate = estimate - std::log(double(locations));
      stats.select(1, 0).copy_(lse.expand({globals}));
    } else {
      estimate = pos_mean - totals.select(1, kTotalNeg).sum() / num_neg;
    }
  }
  return {estimate, stats};
}

// The tile's (G, images * L) scores (images [first, first + images)) in the
// accumulation dtype.
at::Tensor dot_product_score_tile(const DotProductProblem& p, int64_t first, int64_t images) {
  const auto acc = acc_dtype(p.local.scalar_type());
  if (p.rows_layout) {
    return gemm_to(p.global, p.rows().narrow(0, first * p.locations, images * p.locations).t(),
                   acc);
  }
  // (images, G, L) from one batched GEMM, then (G, images * L): a copy of the tile only.
  const at::Tensor per_image = batched_gemm_to(p.global.expand({images, p.globals, p.units}),
                                               p.local.narrow(0, first, images), acc);
  return per_image.transpose(0, 1).reshape({p.globals, images * p.locations});
}

// From a tile of d(estimate)/d(score) (accumulation dtype, times the gradient scale):
// d_local's images [first, first + images) (d_local laid out like local_codes) and
// d_global (G, E), accumulation dtype, += its share.
void dot_product_tile_backward(const DotProductProblem& p, const at::Tensor& d_scores,
                               int64_t first, at::Tensor& d_local, at::Tensor& d_global) {
  const NoAutocast no_autocast;
  const int64_t images = d_scores.size(1) / p.locations;
  const at::Tensor ds = host_converted(d_scores, p.local.scalar_type());
  const at::Tensor local = p.local.narrow(0, first, images);
  at::Tensor d_local_tile = d_local.view({p.batch, p.units, -1}).narrow(0, first, images);
  if (p.rows_layout) {  // d_global += dS rows, d_rows = dS^T global: two GEMMs, in place
    const at::Tensor rows = local.transpose(1, 2).reshape({-1, p.units});
    gemm_accumulate(d_global, ds, rows);
    gemm_out(d_local_tile.transpose(1, 2).view({-1, p.units}), ds.t(), p.global);
    return;
  }
  const at::Tensor ds_images =
      ds.view({p.globals, images, p.locations}).transpose(0, 1).contiguous();
  const at::Tensor global_t =
      p.global.t().contiguous();  // (E, G): small; the faster operand layout
  batched_gemm_out(d_local_tile, global_t.expand({images, p.units, p.globals}), ds_images);
  // d_global += sum_j dS_j local_j^T: batched GEMMs over groups of images (at most 2^22
  // products held at once on a CPU, 2^24 on a GPU), each group summed in the
  // accumulation dtype (addbmm would loop slower GEMMs, and on a GPU round its running
  // sum to half precision).
  const int64_t budget = d_global.is_cuda() ? int64_t(1) << 24 : int64_t(1) << 22;
  const int64_t group = std::clamp<int64_t>(budget / (p.globals * p.units), 1, images);
  for (int64_t g = 0; g < images; g += group) {
    const int64_t n = std::min(group, images - g);
    batched_gemm_sum_into(d_global, ds_images.narrow(0, g, n),
                          local.narrow(0, g, n).transpose(1, 2));
  }
}

// body(first, images, tile) for the tiles of whole images [first, first + images).
template <typename Body>
void for_each_tile(const DotProductProblem& p, const Body& body) {
  const int64_t step = p.tile_images();
  for (int64_t first = 0; first < p.batch; first += step) {
    const int64_t images = std::min(step, p.batch - first);
    body(first, images, dot_product_score_tile(p, first, images));
  }
}

}  // namespace

namespace {

// (row statistics (G, 1, kRowStats), positives (B * L; written for InfoNCE only)); each
// tile is handed to `seen` once reduced.
template <typename Seen>
std::tuple<at::Tensor, at::Tensor> reduce_tiles(const DotProductProblem& p,
                                                const DotProductEpilogue& epilogue,
                                                const Seen& seen) {
  const auto acc = p.local.options().dtype(acc_dtype(p.local.scalar_type()));
  at::Tensor row_stats = at::zeros({p.globals, kRowStats}, acc);
  row_stats.select(1, kNegMax).fill_(-INFINITY);
  at::Tensor positives = at::empty({p.columns()}, acc);
  for_each_tile(p, [&](int64_t first, int64_t, const at::Tensor& tile) {
    epilogue.reduce(p, tile, first * p.locations, row_stats, positives);
    seen(tile);
  });
  return {row_stats.unsqueeze(1), positives};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dot_product_mi_statistics(const DotProductProblem& p,
                                                             const DotProductEpilogue& epilogue) {
  const NoAutocast no_autocast;
  auto [row_stats, positives] = reduce_tiles(p, epilogue, [](const at::Tensor&) {});
  if (p.estimator != Estimator::InfoNCE) positives = at::zeros({0}, positives.options());
  return {row_totals(row_stats), positives};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dot_product_mi_forward(
    const DotProductProblem& p, const DotProductEpilogue& epilogue, bool keep_scores) {
  const NoAutocast no_autocast;
  at::Tensor kept;
  const auto [row_stats, positives] = reduce_tiles(p, epilogue, [&](const at::Tensor& tile) {
    if (keep_scores && tile.size(1) == p.columns()) kept = tile;
  });
  auto [estimate, stats] =
      finish(row_stats, positives, p.estimator, p.official, p.batch, p.locations);
  if (!kept.defined()) kept = at::empty({0}, stats.options());
  return {estimate.to(p.local.scalar_type()), stats, kept};
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const std::optional<at::Tensor>& scores,
                                                           const DotProductEpilogue& epilogue) {
  const NoAutocast no_autocast;
  // The gradient of a mean over the B * L positives: a float16 tile of d(estimate)/d(score)
  // is kept times B * L (1 / (B L) is below fp16's normal range), the results divided after.
  const bool scaled = p.local.scalar_type() == at::kHalf;
  const double positives = double(p.positives());
  const at::Tensor coef =
      coefficients(grad, stats, p.estimator, p.batch, p.locations, scaled ? 1.0 : 1.0 / positives);
  at::Tensor d_global = at::zeros({p.globals, p.units}, stats.options());
  // Laid out like the codes where they are in the rows layout (written in place, no
  // transposing copy), contiguous otherwise.
  at::Tensor d_local = p.rows_layout
                           ? host_empty({p.batch, p.locations, p.units}, p.local.options())
                                 .transpose(1, 2)
                                 .view(p.local_codes.sizes())
                           : host_empty(p.local_codes.sizes(), p.local.options());
  const auto tile_backward = [&](int64_t first, at::Tensor tile) {
    epilogue.gradient(p, tile, first * p.locations, coef);
    dot_product_tile_backward(p, tile, first, d_local, d_global);
  };
  if (scores && scores->numel() > 0) {
    // A copy: the gradient overwrites its tile, and a second backward (retain_graph) reads
    // the scores again.
    tile_backward(0, host_empty(scores->sizes(), scores->options()).copy_(*scores));
  } else {
    for_each_tile(p, [&](int64_t first, int64_t, at::Tensor tile) { tile_backward(first, tile); });
  }
  if (scaled) {
    d_local.div_(positives);
    d_global.div_(positives);
  }
  return {d_local, d_global.to(p.local.scalar_type())};
}

namespace {

// The checks as an op, so that the Triton kernels are guarded by the very checks the
// C++ kernels run (they read metadata only).
void check_dot_product_op(const at::Tensor& local, const at::Tensor& global,
                          c10::string_view estimator, int64_t positive_offset, int64_t tile_scores,
                          bool finishable, const std::optional<at::Tensor>& grad,
                          const std::optional<at::Tensor>& stats) {
  const DotProductProblem p =
      check_dot_product_inputs(local, global, estimator, false, positive_offset, tile_scores);
  if (finishable) check_finishable(p);
  if (grad && stats) check_dot_product_stats(*grad, *stats, std::nullopt, p);
}

// The statistics' per-row totals, for the merge across ranks of the Triton backend's.
at::Tensor row_totals_op(const at::Tensor& row_stats) {
  const NoAutocast no_autocast;
  return row_totals(row_stats);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dim_fused, m) {
  m.def(
      "dot_product_mi(Tensor local_codes, Tensor global_codes, str estimator, bool official,"
      " int positive_offset, int tile_scores, bool keep_scores=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "dot_product_mi_backward(Tensor grad, Tensor local_codes, Tensor global_codes, Tensor stats,"
      " str estimator, bool official, int positive_offset, int tile_scores, Tensor? scores=None)"
      " -> (Tensor, Tensor)");
  m.def(
      "dot_product_mi_statistics(Tensor local_codes, Tensor global_codes, str estimator,"
      " int positive_offset, int tile_scores) -> (Tensor, Tensor)");
  m.def(
      "check_dot_product(Tensor local_codes, Tensor global_codes, str estimator,"
      " int positive_offset, int tile_scores, bool finishable, Tensor? grad, Tensor? stats) -> ()");
  m.def("dot_product_mi_row_totals(Tensor row_stats) -> Tensor");
}

TORCH_LIBRARY_IMPL(dim_fused, CompositeExplicitAutograd, m) {
  m.impl("check_dot_product", &check_dot_product_op);
  m.impl("dot_product_mi_row_totals", &row_totals_op);
}

}  // namespace dim_fused
