// dot_product_mi on the CPU: the shared tile plan with SIMD epilogues, one
// global row per task. Row i of a (G, n) tile is n contiguous scores; the
// columns of its positive image form one range, the rest are negatives.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/vectorized.h"
#include "dot_product_mi.h"

namespace dim_fused {
namespace {

using cpu::LaneTotals;
using cpu::transform;

// The tile of `row`: its scores, and the columns [pos_begin, pos_end) of its positives.
template <typename T>
struct TileRow {
  T* scores;
  int64_t n, pos_begin, pos_end;
};

template <typename T, typename Body>
void for_each_row(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                  const Body& body) {
  const ScoreTile shape = score_tile(p, first, tile.size(1));
  T* scores = const_cast<T*>(tile.const_data_ptr<T>());
  at::parallel_for(0, p.globals, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      TileRow<T> r{scores + row * shape.columns, shape.columns, 0, 0};
      shape.positive_columns(row, r.pos_begin, r.pos_end);
      body(row, r);
    }
  });
}

void reduce_cpu(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                at::Tensor& row_stats, at::Tensor& positives) {
  DIM_FUSED_DEVICE_PIECE("dot_product_reduce");
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "dot_product_reduce", [&] {
    const Estimator e = p.estimator;
    scalar_t* stats = row_stats.data_ptr<scalar_t>();
    scalar_t* pos_out = positives.data_ptr<scalar_t>() + first;
    for_each_row<scalar_t>(p, tile, first, [&](int64_t row, const TileRow<scalar_t>& r) {
      LaneTotals<at::vec::Vectorized<scalar_t>> totals;
      const auto negative = [e](auto& t, auto s) { accumulate_negative_term(e, t, s); };
      totals.add(r.scores, 0, r.pos_begin, negative);
      totals.add(r.scores, r.pos_end, r.n, negative);
      if (e == Estimator::InfoNCE) {  // kept for the finish, which pairs each with its row
        std::copy(r.scores + r.pos_begin, r.scores + r.pos_end, pos_out + r.pos_begin);
      } else {
        totals.add(r.scores, r.pos_begin, r.pos_end,
                   [e](auto& t, auto s) { accumulate_positive_term(e, t, s); });
      }
      Totals<scalar_t> held = load_totals(stats + row * kRowStats);
      held.merge(totals.merged());
      store_totals(held, stats + row * kRowStats);
    });
  });
}

void gradient_cpu(const DotProductProblem& p, at::Tensor& tile, int64_t first,
                  const at::Tensor& coef) {
  DIM_FUSED_DEVICE_PIECE("dot_product_gradient");
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "dot_product_gradient", [&] {
    const Estimator e = p.estimator;
    const scalar_t* row_coef = coef.const_data_ptr<scalar_t>();
    for_each_row<scalar_t>(p, tile, first, [&](int64_t row, const TileRow<scalar_t>& r) {
      const scalar_t* c = row_coef + row * kCoefs;
      const auto negative = [&](auto s) {
        using V = decltype(s);
        return dot_negative_grad(e, s, V(c[kNegScale]), V(c[kNegLse]), V(c[kShift]));
      };
      const auto positive = [&](auto s) {
        using V = decltype(s);
        return dot_positive_grad(e, s, V(c[kPosScale]), V(c[kNegLse]));
      };
      transform(r.scores, 0, r.pos_begin, negative);
      transform(r.scores, r.pos_begin, r.pos_end, positive);
      transform(r.scores, r.pos_end, r.n, negative);
    });
  });
}

constexpr DotProductEpilogue kCpuEpilogue{&reduce_cpu, &gradient_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) { register_dot_product_mi<kCpuEpilogue>(m); }

}  // namespace dim_fused
