// The tile driver of dot_product_mi, shared by the CPU and CUDA backends: ATen
// GEMMs (BLAS / cuBLAS) compute one tile of scores at a time, the backend's
// epilogue reduces it (forward) or turns it into d(estimate)/d(scores)
// (backward, recomputing the tile), and the small per-row statistics are
// finished with ATen ops on the device. Memory: one tile plus O(B L + G).
#include <ATen/ATen.h>

#include <cmath>

#include "dim_fused.h"

namespace dim_fused {
namespace {

at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Tiles are (images, G, L): one batched GEMM of the globals (broadcast, not
// copied) with each image's (E, L) codes, in the layout they already have.
template <typename Body>
void for_each_tile(const DotProductProblem& p, const Body& body) {
  const int64_t step = p.tile_images();
  for (int64_t first = 0; first < p.batch; first += step) {
    const int64_t images = std::min(step, p.batch - first);
    const at::Tensor local = p.local.narrow(0, first, images);
    body(first, images, local, at::bmm(p.global.expand({images, p.globals, p.units}), local));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dot_product_mi_forward(const DotProductProblem& p,
                                                          const DotProductEpilogue& epilogue) {
  const auto acc = p.local.options().dtype(acc_dtype(p.local));
  at::Tensor rows = at::zeros({p.globals, 4}, acc);
  rows.select(1, 2).fill_(-INFINITY);
  at::Tensor positives = at::empty({p.batch, p.locations}, acc);
  for_each_tile(p, [&](int64_t first, int64_t, const at::Tensor&, const at::Tensor& tile) {
    epilogue.reduce(p, tile, first, rows, positives);
  });

  at::Tensor stats = at::zeros({p.globals, 2}, acc);
  const at::Tensor neg_lse = rows.select(1, 2) + rows.select(1, 3).log();  // per row
  at::Tensor estimate;
  if (p.estimator == Estimator::InfoNCE) {
    at::Tensor row_lse = neg_lse;
    if (p.official) {  // the official code keeps the L self pairs at score -10
      row_lse =
          at::logaddexp(row_lse, at::full_like(row_lse, -10.0 + std::log(double(p.locations))));
    }
    const at::Tensor candidates_lse = at::logaddexp(positives, row_lse.unsqueeze(1));
    estimate = (positives - candidates_lse).mean();
    if (!p.official) estimate = estimate + std::log1p(double((p.batch - 1) * p.locations));
    stats.select(1, 0).copy_(row_lse);
    stats.select(1, 1).copy_(at::logsumexp(row_lse.unsqueeze(1) - candidates_lse, {1}));
  } else {
    const at::Tensor pos_mean = rows.select(1, 0).sum() / double(p.positives());
    if (p.estimator == Estimator::DV) {
      const at::Tensor lse = at::logsumexp(neg_lse, {0});
      estimate = pos_mean - (lse - std::log(double(p.negatives())));
      if (p.official) estimate = estimate - std::log(double(p.locations));
      stats.select(1, 0).copy_(lse.expand({p.globals}));
    } else {
      estimate = pos_mean - rows.select(1, 1).sum() / double(p.negatives());
    }
  }
  return {estimate.to(p.local.scalar_type()), stats};
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward(const at::Tensor& grad,
                                                           const DotProductProblem& p,
                                                           const at::Tensor& stats,
                                                           const DotProductEpilogue& epilogue) {
  const at::Tensor g = grad.to(stats.scalar_type()).reshape({});
  // Per-row coefficients: (positive scale, negative scale, negative lse, shift).
  at::Tensor coef = at::zeros({p.globals, 4}, stats.options());
  coef.select(1, 0).copy_((g / double(p.positives())).expand({p.globals}));
  switch (p.estimator) {
    case Estimator::InfoNCE:
      coef.select(1, 1).copy_((g / double(p.positives())).expand({p.globals}));
      coef.select(1, 2).copy_(stats.select(1, 0));
      coef.select(1, 3).copy_(stats.select(1, 1));
      break;
    case Estimator::DV:
      coef.select(1, 1).copy_(g.expand({p.globals}));
      coef.select(1, 2).copy_(stats.select(1, 0));
      break;
    default: coef.select(1, 1).copy_((g / double(p.negatives())).expand({p.globals}));
  }
  at::Tensor d_global = at::zeros({p.globals, p.units}, stats.options());
  at::Tensor d_local = at::empty({p.batch, p.units, p.locations}, p.local.options());
  const at::Tensor zero = at::zeros({p.globals, p.units}, p.global.options());
  for_each_tile(p, [&](int64_t first, int64_t images, const at::Tensor& local, at::Tensor tile) {
    epilogue.gradient(p, tile, first, coef);
    // The sum over the tile's images of dS_j (G, L) @ local_j^T (L, E), accumulated in fp32.
    d_global.add_(at::addbmm(zero, tile, local.transpose(1, 2), /*beta=*/0));
    at::Tensor d_local_tile = d_local.narrow(0, first, images);
    at::bmm_out(d_local_tile, p.global.t().expand({images, p.units, p.globals}), tile);
  });
  return {d_local, d_global.to(p.global.scalar_type())};
}

}  // namespace dim_fused
