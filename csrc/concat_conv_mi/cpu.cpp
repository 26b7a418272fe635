// concat_conv_mi on the CPU: the shared row-chunk driver with these two SIMD
// kernels around its BLAS GEMMs. perm's range was checked on the host, so every
// source is a row of P.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../common/vectorized.h"
#include "concat_conv_mi.h"

namespace dim_fused {
namespace {

void first_layer_cpu(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& src,
                     int64_t first_row, int64_t locations, at::Tensor& out) {
  DIM_FUSED_DEVICE_PIECE("first_layer");
  const int64_t width = P.size(1);
  const int64_t* source = src.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, P.scalar_type(), "first_layer_cpu", [&] {
        const scalar_t* p = P.const_data_ptr<scalar_t>();
        const scalar_t* q = Q.const_data_ptr<scalar_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        const auto relu_of_sum = [](auto x, auto y) { return Math<decltype(x)>::relu(x + y); };
        at::parallel_for(0, out.size(0), 16, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            cpu::binary_map(p + source[r] * width, q + ((first_row + r) / locations) * width,
                            o + r * width, width, relu_of_sum);
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
  DIM_FUSED_DEVICE_PIECE("first_layer_backward");
  const int64_t width = dP.size(1), rows = dH1.size(0);
  const int64_t* source = src.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dH1.scalar_type(), "first_layer_backward_cpu", [&] {
        using T = cpu::acc_type<scalar_t>;
        using V = at::vec::Vectorized<T>;
        const scalar_t* dh = dH1.const_data_ptr<scalar_t>();
        const scalar_t* h1 = H1.const_data_ptr<scalar_t>();
        T* dp = dP.data_ptr<T>();
        T* dp_features = dP_features != nullptr ? dP_features->data_ptr<T>() : nullptr;
        T* dq = dQ.data_ptr<T>();
        at::parallel_for(0, width, 64, [&](int64_t begin, int64_t end) {
          // A 16-bit row's columns [begin, end) in T: converted in cache, not as a whole copy.
          std::vector<T> dh_columns, h_columns;
          if constexpr (!std::is_same_v<scalar_t, T>) {
            dh_columns.resize(end - begin);
            h_columns.resize(end - begin);
          }
          for (int64_t r = 0; r < rows; ++r) {
            const T* dh_row;
            const T* h_row;
            if constexpr (std::is_same_v<scalar_t, T>) {
              // the same type (a cast only because this lambda is no template: both branches
              // compile)
              dh_row = reinterpret_cast<const T*>(dh + r * width);
              h_row = reinterpret_cast<const T*>(h1 + r * width);
            } else {
              at::vec::convert(dh + r * width + begin, dh_columns.data(), end - begin);
              at::vec::convert(h1 + r * width + begin, h_columns.data(), end - begin);
              dh_row = dh_columns.data() - begin;  // indexed by column below
              h_row = h_columns.data() - begin;
            }
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
