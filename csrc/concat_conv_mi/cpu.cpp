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

// How far ahead the passes over a chunk's rows ask for a row they will read (cpu::prefetch).
constexpr int64_t kRowsAhead = 4;

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
            if (r + kRowsAhead < end) cpu::prefetch(p + source[r + kRowsAhead] * width, width);
            cpu::binary_map(p + source[r] * width, q + ((first_row + r) / locations) * width,
                            o + r * width, width, relu_of_sum, /*streaming=*/true);
          }
          cpu::stream_fence();
        });
      });
}

// One row's columns [begin, end) of the first layer's backward: dz = dh * (h > 0) added into
// each target row given (a 16-bit row converted to float in registers).
template <typename scalar_t>
void first_layer_backward_row(const scalar_t* dh, const scalar_t* h,
                              cpu::acc_type<scalar_t>* const (&targets)[3], int64_t begin,
                              int64_t end) {
  using T = cpu::acc_type<scalar_t>;
  using V = at::vec::Vectorized<T>;
  const auto add = [&](const V& d, const V& hv, int64_t c) {
    const V dz = V::blendv(V(0), d, hv > V(0));
    for (T* t : targets) {
      if (t != nullptr) (V::loadu(t + c) + dz).store(t + c);
    }
  };
  int64_t c = begin;
  if constexpr (std::is_same_v<scalar_t, T>) {
    for (; c + V::size() <= end; c += V::size()) add(V::loadu(dh + c), V::loadu(h + c), c);
  } else {  // a 16-bit vector is two float vectors
    using V16 = at::vec::Vectorized<scalar_t>;
    for (; c + V16::size() <= end; c += V16::size()) {
      const auto [d_lo, d_hi] = at::vec::convert_to_float<scalar_t>(V16::loadu(dh + c));
      const auto [h_lo, h_hi] = at::vec::convert_to_float<scalar_t>(V16::loadu(h + c));
      add(d_lo, h_lo, c);
      add(d_hi, h_hi, c + V::size());
    }
  }
  for (; c < end; ++c) {
    const T dz = T(h[c]) > T(0) ? T(dh[c]) : T(0);
    for (T* t : targets) {
      if (t != nullptr) t[c] += dz;
    }
  }
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
        const scalar_t* dh = dH1.const_data_ptr<scalar_t>();
        const scalar_t* h1 = H1.const_data_ptr<scalar_t>();
        T* dp = dP.data_ptr<T>();
        T* dp_features = dP_features != nullptr ? dP_features->data_ptr<T>() : nullptr;
        T* dq = dQ.data_ptr<T>();
        at::parallel_for(0, width, 64, [&](int64_t begin, int64_t end) {
          for (int64_t r = 0; r < rows; ++r) {
            if (const int64_t ahead = r + kRowsAhead; ahead < rows) {
              cpu::prefetch(dh + ahead * width + begin, end - begin);
              cpu::prefetch(h1 + ahead * width + begin, end - begin);
              cpu::prefetch(dp + source[ahead] * width + begin, end - begin);
            }
            T* const targets[3] = {
                dp + source[r] * width, dq + (image + r / locations) * width,
                dp_features != nullptr ? dp_features + source[r] * width : nullptr};
            first_layer_backward_row(dh + r * width, h1 + r * width, targets, begin, end);
          }
        });
      });
}

// One row of the hidden epilogue: z = relu(z + bias) in place; returns <z, weight> (0 without
// a weight), summed over the SIMD lanes in a fixed order, then the tail.
template <typename scalar_t>
cpu::acc_type<scalar_t> hidden_epilogue_row(scalar_t* z, const cpu::acc_type<scalar_t>* bias,
                                            const cpu::acc_type<scalar_t>* weight, int64_t n) {
  using T = cpu::acc_type<scalar_t>;
  using VT = at::vec::Vectorized<T>;
  using V = at::vec::Vectorized<scalar_t>;
  VT dot(T(0));
  const auto step = [&](VT x, int64_t c) {
    const VT h = Math<VT>::relu(x + VT::loadu(bias + c));
    if (weight != nullptr) dot = at::vec::fmadd(h, VT::loadu(weight + c), dot);
    return h;
  };
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    for (; c + V::size() <= n; c += V::size()) step(V::loadu(z + c), c).store(z + c);
  } else {  // a 16-bit vector is two float vectors
    for (; c + V::size() <= n; c += V::size()) {
      const auto [lo, hi] = at::vec::convert_to_float<scalar_t>(V::loadu(z + c));
      const VT h_lo = step(lo, c), h_hi = step(hi, c + VT::size());
      at::vec::convert_from_float<scalar_t>(h_lo, h_hi).store(z + c);
    }
  }
  T lanes[VT::size()];
  dot.store(lanes);
  T total = 0;
  for (const T lane : lanes) total += lane;
  for (; c < n; ++c) {
    const T h = Math<T>::relu(T(z[c]) + bias[c]);
    z[c] = scalar_t(h);
    if (weight != nullptr) total += h * weight[c];
  }
  return total;
}

void hidden_epilogue_cpu(at::Tensor& z, const at::Tensor& bias, const at::Tensor& weight,
                         at::Tensor& scores) {
  DIM_FUSED_DEVICE_PIECE("hidden_epilogue");
  const int64_t width = z.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, z.scalar_type(), "hidden_epilogue_cpu", [&] {
        using T = cpu::acc_type<scalar_t>;
        scalar_t* rows = z.data_ptr<scalar_t>();
        const T* b = bias.const_data_ptr<T>();
        const T* w = weight.defined() ? weight.const_data_ptr<T>() : nullptr;
        T* out = w != nullptr ? scores.data_ptr<T>() : nullptr;
        at::parallel_for(0, z.size(0), 16, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const T score = hidden_epilogue_row(rows + r * width, b, w, width);
            if (out != nullptr) out[r] = score;
          }
        });
      });
}

// One row's columns of the score layer's backward (g: the row's score gradient): dw_sum +=
// g h, dz = g w where h > 0 (0 elsewhere; a NaN h passes it, as threshold_backward), db_sum +=
// dz; dz streamed to `dz_out` in h's dtype (a 16-bit row converted in registers).
template <typename scalar_t>
void score_backward_row(const scalar_t* h, cpu::acc_type<scalar_t> g,
                        const cpu::acc_type<scalar_t>* w, cpu::acc_type<scalar_t>* dw_sum,
                        cpu::acc_type<scalar_t>* db_sum, scalar_t* dz_out, int64_t n) {
  using T = cpu::acc_type<scalar_t>;
  using V = at::vec::Vectorized<T>;
  const auto step = [&](const V& hv, int64_t c) {
    at::vec::fmadd(V(g), hv, V::loadu(dw_sum + c)).store(dw_sum + c);
    const V dz = V::blendv(V(g) * V::loadu(w + c), V(0), hv <= V(0));
    (V::loadu(db_sum + c) + dz).store(db_sum + c);
    return dz;
  };
  int64_t c = 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    for (; c + V::size() <= n; c += V::size())
      cpu::stream_store(step(V::loadu(h + c), c), dz_out + c);
  } else {  // a 16-bit vector is two float vectors
    using V16 = at::vec::Vectorized<scalar_t>;
    for (; c + V16::size() <= n; c += V16::size()) {
      const auto [lo, hi] = at::vec::convert_to_float<scalar_t>(V16::loadu(h + c));
      cpu::stream_store(at::vec::convert_from_float<scalar_t>(step(lo, c), step(hi, c + V::size())),
                        dz_out + c);
    }
  }
  for (; c < n; ++c) {
    const T hv = T(h[c]);
    const T dz = hv <= T(0) ? T(0) : g * w[c];
    dw_sum[c] += g * hv;
    dz_out[c] = scalar_t(dz);
    db_sum[c] += dz;
  }
}

// Parallel over columns, every row in order within a column range (deterministic sums).
void score_backward_cpu(const at::Tensor& h, const at::Tensor& d_score, const at::Tensor& weight,
                        at::Tensor& d_weight, at::Tensor& d_bias, at::Tensor& d_h) {
  DIM_FUSED_DEVICE_PIECE("score_backward");
  const int64_t rows = h.size(0), width = h.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, h.scalar_type(), "score_backward_cpu", [&] {
        using T = cpu::acc_type<scalar_t>;
        const scalar_t* hidden = h.const_data_ptr<scalar_t>();
        const T* ds = d_score.const_data_ptr<T>();
        const T* w = weight.const_data_ptr<T>();
        T* dw = d_weight.data_ptr<T>();
        T* db = d_bias.numel() > 0 ? d_bias.data_ptr<T>() : nullptr;
        scalar_t* dh = d_h.data_ptr<scalar_t>();
        at::parallel_for(0, width, 128, [&](int64_t begin, int64_t end) {
          const int64_t n = end - begin;
          std::vector<T> dw_sum(n, T(0)), db_sum(n, T(0));
          for (int64_t r = 0; r < rows; ++r) {
            if (r + kRowsAhead < rows) cpu::prefetch(hidden + (r + kRowsAhead) * width + begin, n);
            score_backward_row(hidden + r * width + begin, ds[r], w + begin, dw_sum.data(),
                               db_sum.data(), dh + r * width + begin, n);
          }
          cpu::stream_fence();
          for (int64_t c = 0; c < n; ++c) {
            dw[begin + c] += dw_sum[c];
            if (db != nullptr) db[begin + c] += db_sum[c];
          }
        });
      });
}

constexpr ConcatConvKernels kCpuKernels{&first_layer_cpu, &first_layer_backward_cpu,
                                        &hidden_epilogue_cpu, &score_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) { register_concat_conv_mi<kCpuKernels>(m); }

}  // namespace dim_fused
