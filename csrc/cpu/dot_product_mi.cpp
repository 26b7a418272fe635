// dot_product_mi on the CPU: the shared tile driver with SIMD epilogues, one
// global row per task. A row's scores for image j sit in the L contiguous
// columns [(j - first) L, (j - first + 1) L) of the tile: the row's positive
// image gives one such segment, every other column is a negative.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../dim_fused.h"
#include "vectorized.h"

namespace dim_fused {
namespace {

using cpu::acc_type;
using cpu::for_each_vector;
using cpu::reduce_range;
using cpu::vector_type;

struct RowSegments {
  int64_t columns;    // images * L
  int64_t pos_begin;  // the positive segment; empty when the row has none here
  int64_t pos_end;
};

RowSegments segments(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                     int64_t row) {
  const int64_t columns = tile.size(1), images = columns / p.locations;
  const int64_t image = row - p.offset - first;
  if (image < 0 || image >= images) return {columns, 0, 0};
  return {columns, image * p.locations, (image + 1) * p.locations};
}

void reduce_cpu(const DotProductProblem& p, const at::Tensor& tile, int64_t first, at::Tensor& rows,
                at::Tensor& positives) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, tile.scalar_type(), "dot_product_reduce", [&] {
        using T = acc_type<scalar_t>;
        using V = vector_type<scalar_t>;
        const scalar_t* scores = tile.const_data_ptr<scalar_t>();
        T* row_stats = rows.data_ptr<T>();
        T* pos_out = positives.data_ptr<T>();
        at::parallel_for(0, p.globals, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const scalar_t* row = scores + i * tile.size(1);
            const RowSegments seg = segments(p, tile, first, i);
            auto negative = [&](auto& t, int64_t c) {
              accumulate_negative_term(p.estimator, t,
                                       Math<std::decay_t<decltype(t.pos_sum)>>::load(row + c));
            };
            Totals<T> t = reduce_range<V>(0, seg.pos_begin, negative);
            t.merge(reduce_range<V>(seg.pos_end, seg.columns, negative));
            if (p.estimator == Estimator::InfoNCE) {
              T* out = pos_out + (i - p.offset) * p.locations - seg.pos_begin;
              for (int64_t c = seg.pos_begin; c < seg.pos_end; ++c) out[c] = T(row[c]);
            } else {
              t.merge(reduce_range<V>(seg.pos_begin, seg.pos_end, [&](auto& tt, int64_t c) {
                accumulate_positive_term(p.estimator, tt,
                                         Math<std::decay_t<decltype(tt.pos_sum)>>::load(row + c));
              }));
            }
            T* stats = row_stats + 4 * i;
            Totals<T> held;
            held.pos_sum = stats[0];
            held.neg_sum = stats[1];
            held.neg_lse.max = stats[2];
            held.neg_lse.sum = stats[3];
            held.merge(t);
            stats[0] = held.pos_sum;
            stats[1] = held.neg_sum;
            stats[2] = held.neg_lse.max;
            stats[3] = held.neg_lse.sum;
          }
        });
      });
}

void gradient_cpu(const DotProductProblem& p, at::Tensor& tile, int64_t first,
                  const at::Tensor& coef) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, tile.scalar_type(), "dot_product_gradient", [&] {
        using T = acc_type<scalar_t>;
        using V = vector_type<scalar_t>;
        scalar_t* scores = tile.data_ptr<scalar_t>();
        const T* row_coef = coef.const_data_ptr<T>();
        at::parallel_for(0, p.globals, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            scalar_t* row = scores + i * tile.size(1);
            const T* c = row_coef + 4 * i;
            const RowSegments seg = segments(p, tile, first, i);
            auto negative = [&](auto lane, int64_t col) {
              using L = decltype(lane);
              Math<L>::store(row + col, dot_negative_grad(p.estimator, Math<L>::load(row + col),
                                                          L(c[1]), L(c[2]), L(c[3])));
            };
            for_each_vector<V>(0, seg.pos_begin, negative);
            for_each_vector<V>(seg.pos_end, seg.columns, negative);
            for_each_vector<V>(seg.pos_begin, seg.pos_end, [&](auto lane, int64_t col) {
              using L = decltype(lane);
              Math<L>::store(row + col, dot_positive_grad(p.estimator, Math<L>::load(row + col),
                                                          L(c[0]), L(c[2])));
            });
          }
        });
      });
}

constexpr DotProductEpilogue kCpuEpilogue{&reduce_cpu, &gradient_cpu};

std::tuple<at::Tensor, at::Tensor> dot_product_mi_cpu(const at::Tensor& local,
                                                      const at::Tensor& global,
                                                      c10::string_view estimator, bool official,
                                                      int64_t positive_offset) {
  return dot_product_mi_forward(
      check_dot_product_inputs(local, global, estimator, official, positive_offset), kCpuEpilogue);
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward_cpu(
    const at::Tensor& grad, const at::Tensor& local, const at::Tensor& global,
    const at::Tensor& stats, c10::string_view estimator, bool official, int64_t positive_offset) {
  const auto p = check_dot_product_inputs(local, global, estimator, official, positive_offset);
  auto [d_local, d_global] = dot_product_mi_backward(grad, p, stats, kCpuEpilogue);
  return {d_local.view(local.sizes()), d_global};
}

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) {
  m.impl("dot_product_mi", &dot_product_mi_cpu);
  m.impl("dot_product_mi_backward", &dot_product_mi_backward_cpu);
}

}  // namespace dim_fused
