// concat_conv_mi on the CPU: the shared row-chunk driver with these two SIMD
// kernels around its BLAS GEMMs. perm's range was checked on the host, so every
// source is a row of P.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../dim_fused.h"
#include "vectorized.h"

namespace dim_fused {
namespace {

using cpu::for_each_vector;
using cpu::vector_type;

void first_layer_cpu(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& src,
                     int64_t first_row, int64_t locations, at::Tensor& out) {
  const int64_t width = P.size(1);
  const int64_t* source = src.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, P.scalar_type(), "first_layer_cpu", [&] {
        using V = vector_type<scalar_t>;
        const scalar_t* p = P.const_data_ptr<scalar_t>();
        const scalar_t* q = Q.const_data_ptr<scalar_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        at::parallel_for(0, out.size(0), 16, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const scalar_t* p_row = p + source[r] * width;
            const scalar_t* q_row = q + ((first_row + r) / locations) * width;
            scalar_t* o_row = o + r * width;
            for_each_vector<V>(0, width, [&](auto lane, int64_t h) {
              using L = decltype(lane);
              const L sum = Math<L>::load(p_row + h) + Math<L>::load(q_row + h);
              Math<L>::store(o_row + h, Math<L>::relu(sum));
            });
          }
        });
      });
}

// Parallel over columns, every row in order within a column range: correct (and
// deterministic) for any source map, a permutation or not.
void scatter_rows_cpu(at::Tensor& dP, const at::Tensor& dZ, const at::Tensor& src) {
  const int64_t width = dP.size(1), rows = dZ.size(0);
  const int64_t* source = src.const_data_ptr<int64_t>();
  const at::Tensor d_z = dZ.to(dP.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(dP.scalar_type(), "scatter_rows_cpu", [&] {
    using V = at::vec::Vectorized<scalar_t>;
    scalar_t* d = dP.data_ptr<scalar_t>();
    const scalar_t* z = d_z.const_data_ptr<scalar_t>();
    at::parallel_for(0, width, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = 0; r < rows; ++r) {
        scalar_t* d_row = d + source[r] * width;
        const scalar_t* z_row = z + r * width;
        int64_t h = begin;
        for (; h + V::size() <= end; h += V::size()) {
          (V::loadu(d_row + h) + V::loadu(z_row + h)).store(d_row + h);
        }
        for (; h < end; ++h) d_row[h] += z_row[h];
      }
    });
  });
}

constexpr ConcatConvKernels kCpuKernels{&first_layer_cpu, &scatter_rows_cpu};

std::tuple<at::Tensor, at::Tensor> concat_conv_mi_cpu(const at::Tensor& feature_map,
                                                      const at::Tensor& global_code,
                                                      at::TensorList weights, at::TensorList biases,
                                                      const at::Tensor& perm,
                                                      c10::string_view estimator,
                                                      bool detach_negatives) {
  return concat_conv_mi_forward(check_concat_conv_inputs(feature_map, global_code, weights, biases,
                                                         perm, estimator, detach_negatives),
                                kCpuKernels);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
concat_conv_mi_backward_cpu(const at::Tensor& grad, const at::Tensor& feature_map,
                            const at::Tensor& global_code, at::TensorList weights,
                            at::TensorList biases, const at::Tensor& perm, const at::Tensor& scores,
                            c10::string_view estimator, bool detach_negatives) {
  const auto p = check_concat_conv_inputs(feature_map, global_code, weights, biases, perm,
                                          estimator, detach_negatives);
  check_concat_conv_scores(grad, scores, p);
  auto result = concat_conv_mi_backward(grad, p, scores, kCpuKernels);
  std::get<0>(result) = std::get<0>(result).view(feature_map.sizes());
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) {
  m.impl("concat_conv_mi", &concat_conv_mi_cpu);
  m.impl("concat_conv_mi_backward", &concat_conv_mi_backward_cpu);
}

}  // namespace dim_fused
