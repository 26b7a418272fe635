// dot_product_mi on the CPU: the shared tile driver with SIMD epilogues, one
// global row per task. In an (images, G, L) tile, row i's scores against image
// j are the L contiguous values at tile[j - first][i]: a positive segment when
// j is the row's image (i - offset), a negative one otherwise.
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
using cpu::vector_type;

// Calls visit(segment pointer, image j, positive?) for row i's segments of the tile.
template <typename scalar_t, typename Visit>
void for_each_segment(const DotProductProblem& p, scalar_t* tile, int64_t images, int64_t first,
                      int64_t row, const Visit& visit) {
  for (int64_t k = 0; k < images; ++k) {
    const int64_t image = first + k;
    visit(tile + (k * p.globals + row) * p.locations, image, row - p.offset == image);
  }
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
        const int64_t L = p.locations;
        at::parallel_for(0, p.globals, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            cpu::LaneTotals<V> totals;
            for_each_segment(p, scores, tile.size(0), first, i,
                             [&](const scalar_t* seg, int64_t image, bool positive) {
                               if (positive && p.estimator == Estimator::InfoNCE) {
                                 for (int64_t c = 0; c < L; ++c) pos_out[image * L + c] = T(seg[c]);
                                 return;
                               }
                               totals.add(0, L, [&](auto& t, int64_t c) {
                                 const auto s =
                                     Math<std::decay_t<decltype(t.pos_sum)>>::load(seg + c);
                                 if (positive) {
                                   accumulate_positive_term(p.estimator, t, s);
                                 } else {
                                   accumulate_negative_term(p.estimator, t, s);
                                 }
                               });
                             });
            const Totals<T> t = totals.merged();
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
            const T* c = row_coef + 4 * i;
            for_each_segment(
                p, scores, tile.size(0), first, i, [&](scalar_t* seg, int64_t, bool positive) {
                  for_each_vector<V>(0, p.locations, [&](auto lane, int64_t col) {
                    using L = decltype(lane);
                    const L s = Math<L>::load(seg + col);
                    Math<L>::store(
                        seg + col,
                        positive ? dot_positive_grad(p.estimator, s, L(c[0]), L(c[2]))
                                 : dot_negative_grad(p.estimator, s, L(c[1]), L(c[2]), L(c[3])));
                  });
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
