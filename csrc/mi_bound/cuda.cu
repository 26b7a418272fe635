// mi_bound on CUDA. Forward: a grid-stride pass writes one Totals per block,
// a single-block pass merges them in a fixed order (deterministic, no atomics)
// and writes the estimate and its normaliser; backward is one elementwise pass that
// reads the incoming gradient (and DV's logsumexp, the forward's normaliser) from
// device memory, so nothing syncs with the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/reduce.cuh"
#include "mi_bound.h"

namespace dim_fused {
namespace {

using cuda::block_merge;
using cuda::kThreads;

constexpr int64_t kMaxBlocks = 1024;

// Elements a thread walks: positives (each reading its aligned negatives) for
// InfoNCE, positives and negatives side by side otherwise.
template <typename scalar_t>
__host__ __device__ int64_t extent(const Scores<scalar_t>& s) {
  return s.per_positive() || s.n_pos > s.n_neg ? s.n_pos : s.n_neg;
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    partial_totals_kernel(Scores<scalar_t> s, Totals<T>* partial) {
  Totals<T> t;
  const int64_t n = extent(s);
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    if (i < s.n_pos) s.accumulate_positive(t, i);
    if (!s.per_positive() && i < s.n_neg) s.accumulate_negative(t, i);
  }
  t = block_merge(t);
  if (threadIdx.x == 0) partial[blockIdx.x] = t;
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    merge_totals_kernel(Scores<scalar_t> s, const Totals<T>* partial, int64_t num_partial,
                        scalar_t* estimate, T* normaliser) {
  Totals<T> t;
  for (int64_t b = threadIdx.x; b < num_partial; b += kThreads) t.merge(partial[b]);
  t = block_merge(t);
  if (threadIdx.x == 0) {
    if (estimate != nullptr) *estimate = scalar_t(s.estimate(t));
    *normaliser = s.estimator == Estimator::DV ? t.neg_lse.value() : T(0);
  }
}

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kThreads)
    gradient_kernel(Scores<scalar_t> s, const scalar_t* grad, const T* normaliser, scalar_t* dpos,
                    scalar_t* dneg) {
  const T g = T(*grad);
  const T neg_lse = normaliser != nullptr ? *normaliser : T(0);
  const int64_t n = extent(s);
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    if (i < s.n_pos) s.positive_gradient(i, g, dpos, dneg);
    if (!s.per_positive() && i < s.n_neg) s.negative_gradient(i, g, neg_lse, dneg);
  }
}

int64_t grid_for(int64_t n) {
  return std::max<int64_t>(1, std::min(kMaxBlocks, (n + kThreads - 1) / kThreads));
}

// Launches the two reduction passes; returns the normaliser (0-dim, on the device) and
// writes the estimate when `estimate` is given.
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
at::Tensor reduce_totals(const Scores<scalar_t>& s, const at::Tensor& like, scalar_t* estimate) {
  const int64_t blocks = grid_for(extent(s));
  at::Tensor partial =
      at::empty({blocks * int64_t(sizeof(Totals<T>))}, like.options().dtype(at::kByte));
  at::Tensor normaliser = at::empty({}, like.options().dtype(c10::CppTypeToScalarType<T>::value));
  auto* partial_ptr = reinterpret_cast<Totals<T>*>(partial.data_ptr());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  partial_totals_kernel<<<blocks, kThreads, 0, stream>>>(s, partial_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  merge_totals_kernel<<<1, kThreads, 0, stream>>>(s, partial_ptr, blocks, estimate,
                                                  normaliser.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return normaliser;
}

std::tuple<at::Tensor, at::Tensor> estimate_cuda(const MiBoundProblem& p) {
  at::Tensor out = at::empty({}, p.pos.options());
  at::Tensor normaliser;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.pos.scalar_type(), "mi_bound_cuda",
      [&] { normaliser = reduce_totals(scores_of<scalar_t>(p), p.pos, out.data_ptr<scalar_t>()); });
  return {out, normaliser};
}

std::tuple<at::Tensor, at::Tensor> gradient_cuda(const at::Tensor& grad,
                                                 const std::optional<at::Tensor>& normaliser,
                                                 const MiBoundProblem& p) {
  const at::Tensor g = grad.to(p.pos.scalar_type()).contiguous();
  at::Tensor dpos = at::empty(p.pos.sizes(), p.pos.options());
  at::Tensor dneg = at::empty(p.neg.sizes(), p.neg.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.pos.scalar_type(), "mi_bound_backward_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const auto s = scores_of<scalar_t>(p);
        at::Tensor lse;
        if (p.estimator == Estimator::DV)
          lse = normaliser ? *normaliser : reduce_totals(s, p.pos, static_cast<scalar_t*>(nullptr));
        const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
        gradient_kernel<<<grid_for(extent(s)) * 4, kThreads, 0, stream>>>(
            s, g.const_data_ptr<scalar_t>(), lse.defined() ? lse.const_data_ptr<T>() : nullptr,
            dpos.data_ptr<scalar_t>(), dneg.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {dpos, dneg};
}

constexpr MiBoundKernels kCudaKernels{&estimate_cuda, &gradient_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CUDA, m) { register_mi_bound<kCudaKernels>(m); }

}  // namespace dim_fused
