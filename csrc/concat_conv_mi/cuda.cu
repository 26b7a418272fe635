// concat_conv_mi on CUDA: the shared row-chunk driver (cuBLAS GEMMs through
// ATen) with these two elementwise kernels: the first layer's gather + add +
// ReLU, and the gradient's scatter through a permutation. perm is not checked on
// the host (that would cost a sync): a source of -1 (an index outside [0, B))
// makes its row NaN, and the scatter adds atomically, so a perm that repeats an
// index gives the right sum; a true permutation hits each row once per launch,
// so the result stays deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <ATen/cuda/Atomic.cuh>

#include "../common/reduce.cuh"
#include "concat_conv_mi.h"

namespace dim_fused {
namespace {

using cuda::kThreads;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535); }

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    first_layer_kernel(const scalar_t* P, const scalar_t* Q, const int64_t* src, int64_t first_row,
                       int64_t locations, int64_t rows, int64_t width, scalar_t* out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < rows * width;
       k += int64_t(gridDim.x) * kThreads) {
    const int64_t r = k / width, h = k % width;
    const int64_t source = src[r];
    const T sum = source < 0
                      ? T(NAN)
                      : T(P[source * width + h]) + T(Q[((first_row + r) / locations) * width + h]);
    out[k] = scalar_t(Math<T>::relu(sum));
  }
}

template <typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    scatter_rows_kernel(acc_t* dP, const scalar_t* dZ, const int64_t* src, int64_t rows,
                        int64_t width) {
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < rows * width;
       k += int64_t(gridDim.x) * kThreads) {
    const int64_t r = k / width, h = k % width;
    if (src[r] >= 0) gpuAtomicAdd(dP + src[r] * width + h, acc_t(dZ[k]));
  }
}

void first_layer_cuda(const at::Tensor& P, const at::Tensor& Q, const at::Tensor& src,
                      int64_t first_row, int64_t locations, at::Tensor& out) {
  const int64_t rows = out.size(0), width = out.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, P.scalar_type(), "first_layer_cuda", [&] {
        first_layer_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(
            P.const_data_ptr<scalar_t>(), Q.const_data_ptr<scalar_t>(),
            src.const_data_ptr<int64_t>(), first_row, locations, rows, width,
            out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void scatter_rows_cuda(at::Tensor& dP, const at::Tensor& dZ, const at::Tensor& src) {
  const int64_t rows = dZ.size(0), width = dZ.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, dZ.scalar_type(), "scatter_rows_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        scatter_rows_kernel<<<blocks_for(rows * width), kThreads, 0, stream>>>(
            dP.data_ptr<acc_t>(), dZ.const_data_ptr<scalar_t>(), src.const_data_ptr<int64_t>(),
            rows, width);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// dZ1 = dH1 * (H1 > 0); dQ's per-image sum with ATen (deterministic), dP's scatter atomic.
void first_layer_backward_cuda(const at::Tensor& dH1, const at::Tensor& H1, const at::Tensor& src,
                               int64_t image, int64_t locations, at::Tensor& dP,
                               at::Tensor* dP_features, at::Tensor& dQ) {
  const at::Tensor d_z = at::threshold_backward(dH1, H1, 0);
  const int64_t images = d_z.size(0) / locations;
  dQ.narrow(0, image, images).add_(d_z.view({images, locations, -1}).sum(1));
  scatter_rows_cuda(dP, d_z, src);
  if (dP_features != nullptr) scatter_rows_cuda(*dP_features, d_z, src);
}

constexpr ConcatConvKernels kCudaKernels{&first_layer_cuda, &first_layer_backward_cuda, nullptr,
                                         nullptr};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CUDA, m) { register_concat_conv_mi<kCudaKernels>(m); }

}  // namespace dim_fused
