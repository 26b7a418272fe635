// The tile plan of dot_product_mi, shared by the CPU and CUDA backends; the
// Triton backend reuses its statistics finish, gradient coefficients and tile
// backward (ops). ATen GEMMs compute a (G, n) tile of scores for the n = images x
// L columns of a group of images, in the accumulation dtype, reading the codes in
// their own layout (one GEMM for channels-last codes, a batched GEMM over the
// images' (E, L) matrices otherwise); the backend's epilogue reduces it (forward) or turns it
// into d(estimate)/d(score) (backward, recomputing the tile); the per-row
// statistics are finished with ATen ops on the device. Memory: one tile plus
// O(B L + G E). See docs/design.md ("Encode-and-dot").
#include <ATen/ATen.h>

#include <cmath>

#include "dim_fused.h"

namespace dim_fused {
namespace {

// body(first, images, tile) for the tiles of whole images [first, first + images).
template <typename Body>
void for_each_tile(const DotProductProblem& p, const Body& body) {
  const int64_t step = p.tile_images();
  for (int64_t first = 0; first < p.batch; first += step) {
    const int64_t images = std::min(step, p.batch - first);
    body(first, images, dot_product_score_tile(p, first, images));
  }
}

// The per-row coefficients of the gradient epilogue, (G, kCoefs), times the
// gradient scale B * L: scaled, a half-precision gradient tile holds values
// near 1 instead of underflowing (1 / (B L) is below fp16's normal range).
at::Tensor coefficients(const at::Tensor& grad, const at::Tensor& stats, Estimator e, int64_t batch,
                        int64_t locations) {
  const char* op = "dim_fused.dot_product_mi_coefficients: ";
  TORCH_CHECK_VALUE(grad.numel() == 1 && grad.device() == stats.device(), op,
                    "grad must be one element on ", stats.device());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(1) == 2 && stats.size(0) >= batch &&
                        batch >= 2 && locations >= 1,
                    op, "need stats (G >= B, 2) for B = ", batch, ", got ", stats.sizes());
  const int64_t globals = stats.size(0);
  const double positives = double(batch * locations);
  const at::Tensor g = grad.to(stats.scalar_type()).reshape({}).expand({globals});
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

std::tuple<at::Tensor, at::Tensor> finish(const at::Tensor& row_stats, const at::Tensor& positives,
                                          Estimator e, bool official, int64_t batch,
                                          int64_t locations) {
  const char* op = "dim_fused.dot_product_mi_finish: ";
  TORCH_CHECK_VALUE(row_stats.dim() == 3 && row_stats.size(2) == kRowStats && batch >= 2 &&
                        locations >= 1 && row_stats.size(0) >= batch,
                    op, "need row_stats (G >= B, S, ", int(kRowStats), ") for B = ", batch,
                    ", got ", row_stats.sizes());
  TORCH_CHECK_VALUE(positives.numel() == batch * locations &&
                        positives.scalar_type() == row_stats.scalar_type() &&
                        positives.device() == row_stats.device(),
                    op, "positives must hold B * L = ", batch * locations,
                    " scores of row_stats' dtype and device");
  const int64_t globals = row_stats.size(0);
  const double num_pos = double(batch * locations), num_neg = double((globals - 1) * num_pos);
  // Each split's negatives as a logsumexp (see LogSumExp), then merged over the splits.
  const at::Tensor max = row_stats.select(2, kNegMax);
  const at::Tensor shift = at::where(at::isfinite(max), max, at::zeros_like(max));
  const at::Tensor neg_lse = at::logsumexp(shift + row_stats.select(2, kNegSumExp).log(), {1});
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
    const at::Tensor pos_mean = row_stats.select(2, kPosSum).sum() / num_pos;
    if (e == Estimator::DV) {
      const at::Tensor lse = at::logsumexp(neg_lse, {0});
      estimate = pos_mean - (lse - std::log(num_neg));
      if (official) estimate = estimate - std::log(double(locations));
      stats.select(1, 0).copy_(lse.expand({globals}));
    } else {
      estimate = pos_mean - row_stats.select(2, kNegSum).sum() / num_neg;
    }
  }
  return {estimate, stats};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dot_product_mi_finish(const at::Tensor& row_stats,
                                                         const at::Tensor& positives,
                                                         c10::string_view estimator, bool official,
                                                         int64_t batch, int64_t locations) {
  const NoAutocast no_autocast;
  return finish(row_stats, positives, parse_estimator(estimator), official, batch, locations);
}

at::Tensor dot_product_mi_coefficients(const at::Tensor& grad, const at::Tensor& stats,
                                       c10::string_view estimator, int64_t batch,
                                       int64_t locations) {
  const NoAutocast no_autocast;
  return coefficients(grad, stats, parse_estimator(estimator), batch, locations);
}

at::Tensor dot_product_score_tile(const DotProductProblem& p, int64_t first, int64_t images) {
  const auto acc = acc_dtype(p.local.scalar_type());
  if (p.rows_layout) {
    return mm_to(p.global, p.rows().narrow(0, first * p.locations, images * p.locations).t(), acc);
  }
  // (images, G, L) from one batched GEMM, then (G, images * L): a copy of the tile only.
  const at::Tensor per_image =
      bmm_to(p.global.expand({images, p.globals, p.units}), p.local.narrow(0, first, images), acc);
  return per_image.transpose(0, 1).reshape({p.globals, images * p.locations});
}

void dot_product_tile_backward(const DotProductProblem& p, const at::Tensor& d_scores,
                               int64_t first, at::Tensor& d_local, at::Tensor& d_global) {
  const NoAutocast no_autocast;
  const int64_t images = d_scores.size(1) / p.locations;
  const at::Tensor ds = d_scores.to(p.local.scalar_type());
  const at::Tensor local = p.local.narrow(0, first, images);
  at::Tensor d_local_tile = d_local.view({p.batch, p.units, -1}).narrow(0, first, images);
  if (p.rows_layout) {  // d_global += dS rows, d_rows = dS^T global: two GEMMs, in place
    const at::Tensor rows = local.transpose(1, 2).reshape({-1, p.units});
    d_global.add_(mm_to(ds, rows, d_global.scalar_type()));
    at::Tensor d_rows = d_local_tile.transpose(1, 2).view({-1, p.units});
    at::mm_out(d_rows, ds.t(), p.global);
    return;
  }
  const at::Tensor ds_images =
      ds.view({p.globals, images, p.locations}).transpose(0, 1).contiguous();
  const at::Tensor global_t =
      p.global.t().contiguous();  // (E, G): small; the faster operand layout
  at::bmm_out(d_local_tile, global_t.expand({images, p.units, p.globals}), ds_images);
  // d_global += sum_j dS_j local_j^T: batched GEMMs over groups of images (at most 2^22
  // products held at once on a CPU, 2^24 on a GPU), each group summed in the
  // accumulation dtype (addbmm would loop slower GEMMs, and on a GPU round its running
  // sum to half precision).
  const int64_t budget = d_global.is_cuda() ? int64_t(1) << 24 : int64_t(1) << 22;
  const int64_t group = std::clamp<int64_t>(budget / (p.globals * p.units), 1, images);
  for (int64_t g = 0; g < images; g += group) {
    const int64_t n = std::min(group, images - g);
    d_global.add_(bmm_to(ds_images.narrow(0, g, n), local.narrow(0, g, n).transpose(1, 2),
                         d_global.scalar_type())
                      .sum(0));
  }
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_forward(const DotProductProblem& p,
                                                          const DotProductEpilogue& epilogue) {
  const NoAutocast no_autocast;
  const auto acc = p.local.options().dtype(acc_dtype(p.local.scalar_type()));
  at::Tensor row_stats = at::zeros({p.globals, kRowStats}, acc);
  row_stats.select(1, kNegMax).fill_(-INFINITY);
  at::Tensor positives = at::empty({p.columns()}, acc);
  for_each_tile(p, [&](int64_t first, int64_t, const at::Tensor& tile) {
    epilogue.reduce(p, tile, first * p.locations, row_stats, positives);
  });
  auto [estimate, stats] =
      finish(row_stats.unsqueeze(1), positives, p.estimator, p.official, p.batch, p.locations);
  return {estimate.to(p.local.scalar_type()), stats};
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const DotProductEpilogue& epilogue) {
  const NoAutocast no_autocast;
  const at::Tensor coef = coefficients(grad, stats, p.estimator, p.batch, p.locations);
  at::Tensor d_global = at::zeros({p.globals, p.units}, stats.options());
  // Laid out like the codes where they are in the rows layout (written in place, no
  // transposing copy), contiguous otherwise.
  at::Tensor d_local = p.rows_layout ? at::empty({p.batch, p.locations, p.units}, p.local.options())
                                           .transpose(1, 2)
                                           .view(p.local_codes.sizes())
                                     : at::empty(p.local_codes.sizes(), p.local.options());
  for_each_tile(p, [&](int64_t first, int64_t, at::Tensor tile) {
    epilogue.gradient(p, tile, first * p.locations, coef);
    dot_product_tile_backward(p, tile, first, d_local, d_global);
  });
  const double unscale = 1.0 / double(p.positives());  // the coefficients' gradient scale
  return {d_local.mul_(unscale), d_global.mul_(unscale).to(p.local.scalar_type())};
}

}  // namespace dim_fused
