// concat_conv_mi on the CPU: the shared row-chunk driver with these two SIMD
// kernels around its BLAS GEMMs. perm's range was checked on the host, so every
// source is a row of P.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/vectorized.h"
#include "concat_conv_mi.h"

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

// dZ1 = dH1 * (H1 > 0) into dP (at each row's source) and dQ (at its image), in one pass.
// Parallel over columns, every row in order within a column range: correct (and
// deterministic) for any source map, a permutation or not.
void first_layer_backward_cpu(const at::Tensor& dH1, const at::Tensor& H1, const at::Tensor& src,
                              int64_t image, int64_t locations, at::Tensor& dP,
                              at::Tensor* dP_features, at::Tensor& dQ) {
  const int64_t width = dP.size(1), rows = dH1.size(0);
  const int64_t* source = src.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dH1.scalar_type(), "first_layer_backward_cpu", [&] {
        using T = cpu::acc_type<scalar_t>;
        using V = at::vec::Vectorized<T>;
        const at::Tensor d_h = dH1.to(dP.scalar_type()),
                         h = H1.to(dP.scalar_type());  // no-ops but for half
        const T* dh = d_h.const_data_ptr<T>();
        const T* h1 = h.const_data_ptr<T>();
        T* dp = dP.data_ptr<T>();
        T* dp_features = dP_features != nullptr ? dP_features->data_ptr<T>() : nullptr;
        T* dq = dQ.data_ptr<T>();
        at::parallel_for(0, width, 64, [&](int64_t begin, int64_t end) {
          for (int64_t r = 0; r < rows; ++r) {
            const T* dh_row = dh + r * width;
            const T* h_row = h1 + r * width;
            T* targets[3] = {dp + source[r] * width, dq + (image + r / locations) * width,
                             dp_features != nullptr ? dp_features + source[r] * width : nullptr};
            int64_t c = begin;
            for (; c + V::size() <= end; c += V::size()) {
              const V dz = V::blendv(V(0), V::loadu(dh_row + c), V::loadu(h_row + c) > V(0));
              for (T* t : targets) {
                if (t != nullptr) (V::loadu(t + c) + dz).store(t + c);
              }
            }
            for (; c < end; ++c) {
              const T dz = h_row[c] > T(0) ? dh_row[c] : T(0);
              for (T* t : targets) {
                if (t != nullptr) t[c] += dz;
              }
            }
          }
        });
      });
}

constexpr ConcatConvKernels kCpuKernels{&first_layer_cpu, &first_layer_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) { register_concat_conv_mi<kCpuKernels>(m); }

}  // namespace dim_fused
