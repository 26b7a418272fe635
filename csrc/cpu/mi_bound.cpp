// mi_bound on the CPU: fixed-size chunks reduced in parallel, then merged in
// chunk order, so the result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../dim_fused.h"

namespace dim_fused {
namespace {

constexpr int64_t kChunk = 1 << 14;

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
Totals<acc_t> reduce_totals(const Scores<scalar_t>& s) {
  const int64_t n = s.extent();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<Totals<acc_t>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Totals<acc_t> t;
      const int64_t stop = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < stop; ++i) s.accumulate(t, i);
      partial[c] = t;
    }
  });
  Totals<acc_t> total;
  for (const auto& p : partial) total.merge(p);
  return total;
}

at::Tensor mi_bound_cpu(const at::Tensor& pos, const at::Tensor& neg, c10::string_view estimator) {
  const MiBoundProblem p = check_mi_bound_inputs(pos, neg, estimator);
  at::Tensor out = at::empty({}, pos.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pos.scalar_type(), "mi_bound_cpu", [&] {
    const auto s = scores_of<scalar_t>(p);
    out.fill_(s.estimate(reduce_totals(s)));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mi_bound_backward_cpu(const at::Tensor& grad,
                                                         const at::Tensor& pos,
                                                         const at::Tensor& neg,
                                                         c10::string_view estimator) {
  const MiBoundProblem p = check_mi_bound_inputs(pos, neg, estimator);
  at::Tensor dpos = at::empty(pos.sizes(), pos.options());
  at::Tensor dneg = at::empty(neg.sizes(), neg.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, pos.scalar_type(), "mi_bound_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto s = scores_of<scalar_t>(p);
        const acc_t g = grad.item<acc_t>();
        const acc_t neg_lse =
            p.estimator == Estimator::DV ? reduce_totals(s).neg_lse.value() : acc_t(0);
        scalar_t* dp = dpos.data_ptr<scalar_t>();
        scalar_t* dn = dneg.data_ptr<scalar_t>();
        at::parallel_for(0, s.extent(), kChunk, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) s.gradient(i, g, neg_lse, dp, dn);
        });
      });
  return {dpos, dneg};
}

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) {
  m.impl("mi_bound", &mi_bound_cpu);
  m.impl("mi_bound_backward", &mi_bound_backward_cpu);
}

}  // namespace dim_fused
