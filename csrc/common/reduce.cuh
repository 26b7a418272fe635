// Block-level pieces shared by the CUDA kernels.
#pragma once

#include "estimators.h"

namespace dim_fused {
namespace cuda {

constexpr int kThreads = 256;

// Tree reduction of one Totals per thread; thread 0 ends with the block's.
template <typename T>
__device__ Totals<T> block_merge(Totals<T> t) {
  __shared__ alignas(Totals<T>) unsigned char storage[kThreads * sizeof(Totals<T>)];
  auto* shared = reinterpret_cast<Totals<T>*>(storage);
  shared[threadIdx.x] = t;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x].merge(shared[threadIdx.x + stride]);
    __syncthreads();
  }
  return shared[0];
}

}  // namespace cuda
}  // namespace dim_fused
