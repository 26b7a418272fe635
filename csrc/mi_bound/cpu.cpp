// mi_bound on the CPU: SIMD vectors over fixed-size chunks reduced in parallel,
// then merged in chunk order, so the result does not depend on the number of
// threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../common/vectorized.h"
#include "mi_bound.h"

namespace dim_fused {

namespace {

using cpu::acc_type;
using cpu::for_each_vector;
using cpu::reduce_range;
using cpu::vector_type;

constexpr int64_t kChunk = 1 << 14;

// Sum over chunks of [0, n) of per-element steps, merged in chunk order.
template <typename T, typename V, typename Accumulate>
Totals<T> reduce_chunks(int64_t n, const Accumulate& accumulate) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<Totals<T>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      partial[c] = reduce_range<V>(c * kChunk, std::min(n, (c + 1) * kChunk), accumulate);
    }
  });
  Totals<T> total;
  for (const auto& p : partial) total.merge(p);
  return total;
}

template <typename scalar_t, typename T = acc_type<scalar_t>>
Totals<T> reduce_totals(const Scores<scalar_t>& s) {
  using V = vector_type<scalar_t>;
  Totals<T> total =
      reduce_chunks<T, V>(s.n_pos, [&](auto& t, int64_t i) { s.accumulate_positive(t, i); });
  if (!s.per_positive()) {
    const Totals<T> neg =
        reduce_chunks<T, V>(s.n_neg, [&](auto& t, int64_t i) { s.accumulate_negative(t, i); });
    total.neg_sum = neg.neg_sum;
    total.neg_lse = neg.neg_lse;
  }
  return total;
}

std::tuple<at::Tensor, at::Tensor> estimate_cpu(const MiBoundProblem& p) {
  DIM_FUSED_DEVICE_PIECE("mi_bound_estimate");
  at::Tensor out = at::empty({}, p.pos.options());
  at::Tensor normaliser = at::empty({}, p.pos.options().dtype(acc_dtype(p.pos.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.pos.scalar_type(), "mi_bound_cpu", [&] {
        const auto s = scores_of<scalar_t>(p);
        const auto totals = reduce_totals(s);
        out.fill_(s.estimate(totals));
        normaliser.fill_(p.estimator == Estimator::DV ? totals.neg_lse.value() : 0);
      });
  return {out, normaliser};
}

std::tuple<at::Tensor, at::Tensor> gradient_cpu(const at::Tensor& grad,
                                                const std::optional<at::Tensor>& normaliser,
                                                const MiBoundProblem& p) {
  DIM_FUSED_DEVICE_PIECE("mi_bound_gradient");
  at::Tensor dpos = at::empty(p.pos.sizes(), p.pos.options());
  at::Tensor dneg = at::empty(p.neg.sizes(), p.neg.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.pos.scalar_type(), "mi_bound_backward_cpu", [&] {
        using T = acc_type<scalar_t>;
        using V = vector_type<scalar_t>;
        const auto s = scores_of<scalar_t>(p);
        const T g = grad.item<T>();
        T neg_lse = T(0);
        if (p.estimator == Estimator::DV)
          neg_lse = normaliser ? normaliser->item<T>() : reduce_totals(s).neg_lse.value();
        scalar_t* dp = dpos.data_ptr<scalar_t>();
        scalar_t* dn = dneg.data_ptr<scalar_t>();
        at::parallel_for(0, s.n_pos, kChunk, [&](int64_t begin, int64_t end) {
          for_each_vector<V>(begin, end, [&](auto lane, int64_t i) {
            using L = decltype(lane);
            s.positive_gradient(i, L(g), dp, dn);
          });
        });
        if (s.per_positive()) return;
        at::parallel_for(0, s.n_neg, kChunk, [&](int64_t begin, int64_t end) {
          for_each_vector<V>(begin, end, [&](auto lane, int64_t i) {
            using L = decltype(lane);
            s.negative_gradient(i, L(g), L(neg_lse), dn);
          });
        });
      });
  return {dpos, dneg};
}

constexpr MiBoundKernels kCpuKernels{&estimate_cpu, &gradient_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) { register_mi_bound<kCpuKernels>(m); }

}  // namespace dim_fused
