// dot_product_mi on CUDA: the shared tile plan (cuBLAS GEMMs through ATen) with
// these epilogues on (G, n) tiles in the accumulation dtype. Reduce: one block
// per (row, column block), flattened on gridDim.x (so G is not limited to
// gridDim.y's 65535), writes one Totals; one thread per row then merges its
// blocks in order into the row's statistics (deterministic, no atomics).
// Gradient: elementwise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../common/reduce.cuh"
#include "dot_product_mi.h"

namespace dim_fused {
namespace {

using cuda::block_merge;
using cuda::kThreads;

constexpr int64_t kColumnsPerBlock = 8 * kThreads;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_partials_kernel(const T* tile, ScoreTile s, int64_t column_blocks, Totals<T>* partial,
                        T* positives) {
  const int64_t row = blockIdx.x / column_blocks, block = blockIdx.x % column_blocks;
  int64_t pos_begin, pos_end;
  s.positive_columns(row, pos_begin, pos_end);
  const T* scores = tile + row * s.columns;
  const int64_t end = std::min(s.columns, (block + 1) * kColumnsPerBlock);
  Totals<T> t;
  for (int64_t c = block * kColumnsPerBlock + threadIdx.x; c < end; c += kThreads) {
    const T x = scores[c];
    if (c < pos_begin || c >= pos_end) {
      accumulate_negative_term(s.estimator, t, x);
    } else if (s.estimator == Estimator::InfoNCE) {
      positives[c] = x;  // the tile's own columns, offset by the caller
    } else {
      accumulate_positive_term(s.estimator, t, x);
    }
  }
  t = block_merge(t);
  if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

template <typename T>
__global__ void merge_rows_kernel(const Totals<T>* partial, int64_t column_blocks, int64_t num_rows,
                                  T* row_stats) {
  const int64_t row = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (row >= num_rows) return;
  Totals<T> held = load_totals(row_stats + row * kRowStats);
  for (int64_t b = 0; b < column_blocks; ++b) held.merge(partial[row * column_blocks + b]);
  store_totals(held, row_stats + row * kRowStats);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gradient_kernel(T* tile, ScoreTile s, int64_t num_rows, const T* coef) {
  const int64_t n = num_rows * s.columns;
  for (int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * kThreads) {
    const int64_t row = k / s.columns, column = k % s.columns;
    int64_t pos_begin, pos_end;
    s.positive_columns(row, pos_begin, pos_end);
    const T* c = coef + row * kCoefs;
    const bool positive = column >= pos_begin && column < pos_end;
    tile[k] = positive
                  ? dot_positive_grad(s.estimator, tile[k], c[kPosScale], c[kNegLse])
                  : dot_negative_grad(s.estimator, tile[k], c[kNegScale], c[kNegLse], c[kShift]);
  }
}

void reduce_cuda(const DotProductProblem& p, const at::Tensor& tile, int64_t first,
                 at::Tensor& row_stats, at::Tensor& positives) {
  const ScoreTile shape = score_tile(p, first, tile.size(1));
  const int64_t column_blocks = (shape.columns + kColumnsPerBlock - 1) / kColumnsPerBlock;
  const int64_t blocks = p.globals * column_blocks;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "dim_fused.dot_product_mi: too many score blocks for one launch; lower "
              "DIM_FUSED_TILE_SCORES");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "dot_product_reduce_cuda", [&] {
    at::Tensor partial =
        at::empty({blocks * int64_t(sizeof(Totals<scalar_t>))}, tile.options().dtype(at::kByte));
    auto* partial_ptr = reinterpret_cast<Totals<scalar_t>*>(partial.data_ptr());
    row_partials_kernel<<<blocks, kThreads, 0, stream>>>(tile.const_data_ptr<scalar_t>(), shape,
                                                         column_blocks, partial_ptr,
                                                         positives.data_ptr<scalar_t>() + first);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_rows_kernel<<<(p.globals + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        partial_ptr, column_blocks, p.globals, row_stats.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void gradient_cuda(const DotProductProblem& p, at::Tensor& tile, int64_t first,
                   const at::Tensor& coef) {
  const int64_t blocks = std::min<int64_t>((tile.numel() + kThreads - 1) / kThreads, 65535);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "dot_product_gradient_cuda", [&] {
    gradient_kernel<<<blocks, kThreads, 0, stream>>>(tile.data_ptr<scalar_t>(),
                                                     score_tile(p, first, tile.size(1)), p.globals,
                                                     coef.const_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

constexpr DotProductEpilogue kCudaEpilogue{&reduce_cuda, &gradient_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CUDA, m) { register_dot_product_mi<kCudaEpilogue>(m); }

}  // namespace dim_fused
