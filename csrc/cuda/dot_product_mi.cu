// dot_product_mi on CUDA: the shared tile driver (cuBLAS GEMMs through ATen)
// with these epilogues. Reduce: a (column block, row) grid writes one Totals per
// block, then one thread per row merges its blocks in order into the row's
// running statistics (deterministic, no atomics). Gradient: elementwise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../dim_fused.h"
#include "reduce.cuh"

namespace dim_fused {
namespace {

using cuda::block_merge;
using cuda::kThreads;

constexpr int64_t kColumnsPerBlock = 8 * kThreads;

// Where one (images, G, L) tile sits in the problem. Row i's scores form the
// `columns` = images * L values (image k, location l) at tile[k][i][l].
struct TileShape {
  int64_t columns;
  int64_t globals;
  int64_t locations;
  int64_t row_offset;  // the global row whose positive is the tile's first image
  Estimator estimator;

  __device__ int64_t index(int64_t row, int64_t column) const {
    return ((column / locations) * globals + row) * locations + column % locations;
  }
  __device__ bool positive(int64_t row, int64_t column) const {
    return row - row_offset == column / locations;
  }
};

TileShape shape_of(const DotProductProblem& p, const at::Tensor& tile, int64_t first) {
  return {tile.size(0) * p.locations, p.globals, p.locations, p.offset + first, p.estimator};
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    row_partials_kernel(const scalar_t* tile, TileShape s, Totals<T>* partial, T* positives) {
  const int64_t row = blockIdx.y;
  const int64_t end = std::min(s.columns, int64_t(blockIdx.x + 1) * kColumnsPerBlock);
  Totals<T> t;
  for (int64_t c = blockIdx.x * kColumnsPerBlock + threadIdx.x; c < end; c += kThreads) {
    const T x = T(tile[s.index(row, c)]);
    if (!s.positive(row, c)) {
      accumulate_negative_term(s.estimator, t, x);
    } else if (s.estimator == Estimator::InfoNCE) {
      positives[c] = x;  // positives of this tile's images, (images, L)
    } else {
      accumulate_positive_term(s.estimator, t, x);
    }
  }
  t = block_merge(t);
  if (threadIdx.x == 0) partial[row * gridDim.x + blockIdx.x] = t;
}

template <typename T>
__global__ void merge_rows_kernel(const Totals<T>* partial, int64_t blocks, int64_t num_rows,
                                  T* rows) {
  const int64_t row = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (row >= num_rows) return;
  T* stats = rows + 4 * row;
  Totals<T> held;
  held.pos_sum = stats[0];
  held.neg_sum = stats[1];
  held.neg_lse.max = stats[2];
  held.neg_lse.sum = stats[3];
  for (int64_t b = 0; b < blocks; ++b) held.merge(partial[row * blocks + b]);
  stats[0] = held.pos_sum;
  stats[1] = held.neg_sum;
  stats[2] = held.neg_lse.max;
  stats[3] = held.neg_lse.sum;
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    gradient_kernel(scalar_t* tile, TileShape s, int64_t num_rows, const T* coef) {
  const int64_t n = num_rows * s.columns;
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * kThreads) {
    const int64_t row = (k / s.locations) % s.globals;
    const int64_t column = (k / (s.globals * s.locations)) * s.locations + k % s.locations;
    const T* c = coef + 4 * row;
    const T x = T(tile[k]);
    tile[k] =
        scalar_t(s.positive(row, column) ? dot_positive_grad(s.estimator, x, c[0], c[2])
                                         : dot_negative_grad(s.estimator, x, c[1], c[2], c[3]));
  }
}

void reduce_cuda(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                 at::Tensor& rows, at::Tensor& positives) {
  const int64_t blocks = (tile.size(0) * p.locations + kColumnsPerBlock - 1) / kColumnsPerBlock;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, tile.scalar_type(), "dot_product_reduce_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        at::Tensor partial = at::empty({p.globals * blocks * int64_t(sizeof(Totals<T>))},
                                       tile.options().dtype(at::kByte));
        auto* partial_ptr = reinterpret_cast<Totals<T>*>(partial.data_ptr());
        row_partials_kernel<<<dim3(blocks, p.globals), kThreads, 0, stream>>>(
            tile.const_data_ptr<scalar_t>(), shape_of(p, tile, first), partial_ptr,
            positives.data_ptr<T>() + first * p.locations);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        merge_rows_kernel<<<(p.globals + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
            partial_ptr, blocks, p.globals, rows.data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void gradient_cuda(const DotProductProblem& p, at::Tensor& tile, int64_t first,
                   const at::Tensor& coef) {
  const int64_t n = tile.numel();
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, tile.scalar_type(), "dot_product_gradient_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        gradient_kernel<<<blocks, kThreads, 0, stream>>>(tile.data_ptr<scalar_t>(),
                                                         shape_of(p, tile, first), p.globals,
                                                         coef.const_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

constexpr DotProductEpilogue kCudaEpilogue{&reduce_cuda, &gradient_cuda};

std::tuple<at::Tensor, at::Tensor> dot_product_mi_cuda(const at::Tensor& local,
                                                       const at::Tensor& global,
                                                       c10::string_view estimator, bool official,
                                                       int64_t positive_offset) {
  const c10::cuda::CUDAGuard guard(local.device());
  return dot_product_mi_forward(
      check_dot_product_inputs(local, global, estimator, official, positive_offset), kCudaEpilogue);
}

std::tuple<at::Tensor, at::Tensor> dot_product_mi_backward_cuda(
    const at::Tensor& grad, const at::Tensor& local, const at::Tensor& global,
    const at::Tensor& stats, c10::string_view estimator, bool official, int64_t positive_offset) {
  const c10::cuda::CUDAGuard guard(local.device());
  const auto p = check_dot_product_inputs(local, global, estimator, official, positive_offset);
  auto [d_local, d_global] = dot_product_mi_backward(grad, p, stats, kCudaEpilogue);
  return {d_local.view(local.sizes()), d_global};
}

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CUDA, m) {
  m.impl("dot_product_mi", &dot_product_mi_cuda);
  m.impl("dot_product_mi_backward", &dot_product_mi_backward_cuda);
}

}  // namespace dim_fused
