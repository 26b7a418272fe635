// The tile plan of dot_product_mi, shared by the CPU and CUDA backends; the
// Triton backend reuses its statistics finish and gradient coefficients (ops). One ATen
// GEMM computes a (G, n) tile of scores for n columns of the rows layout, in the
// accumulation dtype; the backend's epilogue reduces it (forward) or turns it
// into d(estimate)/d(score) (backward, recomputing the tile); the per-row
// statistics are finished with ATen ops on the device. Memory: one tile plus
// O(B L + G E). See docs/design.md ("Encode-and-dot").
#include <ATen/ATen.h>

#include <cmath>

#include "dim_fused.h"

namespace dim_fused {
namespace {

// body(first, n, rows, tile): tile = the (G, n) scores of rows [first, first + n).
template <typename Body>
void for_each_tile(const DotProductProblem& p, const Body& body) {
  const int64_t step = p.tile_columns();
  const auto acc = acc_dtype(p.rows.scalar_type());
  for (int64_t first = 0; first < p.columns(); first += step) {
    const int64_t n = std::min(step, p.columns() - first);
    const at::Tensor rows = p.rows.narrow(0, first, n);
    body(first, n, rows, mm_to(p.global, rows.t(), acc));
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
  return finish(row_stats, positives, parse_estimator(estimator), official, batch, locations);
}

at::Tensor dot_product_mi_coefficients(const at::Tensor& grad, const at::Tensor& stats,
                                       c10::string_view estimator, int64_t batch,
                                       int64_t locations) {
  return coefficients(grad, stats, parse_estimator(estimator), batch, locations);
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_forward(const DotProductProblem& p,
                                                          const DotProductEpilogue& epilogue) {
  const auto acc = p.rows.options().dtype(acc_dtype(p.rows.scalar_type()));
  at::Tensor row_stats = at::zeros({p.globals, kRowStats}, acc);
  row_stats.select(1, kNegMax).fill_(-INFINITY);
  at::Tensor positives = at::empty({p.columns()}, acc);
  for_each_tile(p, [&](int64_t first, int64_t, const at::Tensor&, const at::Tensor& tile) {
    epilogue.reduce(p, tile, first, row_stats, positives);
  });
  auto [estimate, stats] =
      finish(row_stats.unsqueeze(1), positives, p.estimator, p.official, p.batch, p.locations);
  return {estimate.to(p.rows.scalar_type()), stats};
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const DotProductEpilogue& epilogue) {
  const auto dtype = p.rows.scalar_type();
  const at::Tensor coef = coefficients(grad, stats, p.estimator, p.batch, p.locations);
  at::Tensor d_global = at::zeros({p.globals, p.units}, stats.options());
  // The gradient of the rows, written in place where local_codes' layout is the
  // rows layout (channels-last), else through a buffer and one transposing copy.
  at::Tensor d_local = at::empty_like(p.local);
  at::Tensor d_local_rows = d_local.view({p.batch, p.units, -1}).transpose(1, 2);
  const bool in_place = d_local_rows.is_contiguous();
  at::Tensor d_rows = in_place ? d_local_rows.view({-1, p.units})
                               : at::empty({p.columns(), p.units}, p.rows.options());
  for_each_tile(p, [&](int64_t first, int64_t n, const at::Tensor& rows, at::Tensor tile) {
    epilogue.gradient(p, tile, first, coef);
    const at::Tensor d_scores = tile.to(dtype);
    d_global.add_(mm_to(d_scores, rows, stats.scalar_type()));
    at::Tensor d_rows_tile = d_rows.narrow(0, first, n);
    at::mm_out(d_rows_tile, d_scores.t(), p.global);
  });
  const double unscale = 1.0 / double(p.positives());
  d_rows.mul_(unscale);
  if (!in_place) d_local_rows.copy_(d_rows.view(d_local_rows.sizes()));
  return {d_local, (d_global * unscale).to(dtype)};
}

}  // namespace dim_fused
