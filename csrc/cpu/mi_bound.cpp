// mi_bound on the CPU: SIMD vectors (at::vec) over fixed-size chunks reduced in
// parallel, then merged in chunk order, so the result does not depend on the
// number of threads. float and double run vectorised; half and bfloat16 run the
// scalar steps in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../dim_fused.h"

namespace dim_fused {

template <typename T>
struct Math<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  using Scalar = T;
  static constexpr int kWidth = V::size();
  static V load(const T* p) { return V::loadu(p); }
  static void store(T* p, V v) { v.store(p); }
  static V exp(V x) { return x.exp(); }
  static V log(V x) { return x.log(); }
  static V log1p(V x) { return x.log1p(); }
  static V abs(V x) { return x.abs(); }
  static V max(V a, V b) { return at::vec::maximum(a, b); }
  static V sign(V x) { return x.gt(V(0)) - x.lt(V(0)); }
  static V if_nonneg(V x, V a, V b) { return V::blendv(b, a, x >= V(0)); }
};

namespace {

constexpr int64_t kChunk = 1 << 14;

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// SIMD vectors where the scores are already in the accumulation type.
template <typename scalar_t>
using vector_type = std::conditional_t<std::is_same_v<scalar_t, acc_type<scalar_t>>,
                                       at::vec::Vectorized<scalar_t>, acc_type<scalar_t>>;

template <typename V, typename T = typename Math<V>::Scalar>
Totals<T> lanes_merged(const Totals<V>& t) {
  if constexpr (Math<V>::kWidth == 1) {
    return t;
  } else {
    T pos[Math<V>::kWidth], neg[Math<V>::kWidth], max[Math<V>::kWidth], sum[Math<V>::kWidth];
    t.pos_sum.store(pos);
    t.neg_sum.store(neg);
    t.neg_lse.max.store(max);
    t.neg_lse.sum.store(sum);
    Totals<T> out;
    for (int lane = 0; lane < Math<V>::kWidth; ++lane) {
      out.pos_sum += pos[lane];
      out.neg_sum += neg[lane];
      out.neg_lse.merge(max[lane], sum[lane]);
    }
    return out;
  }
}

// Calls step(V, i) on the full vectors of [begin, end), then step(scalar, i) on the tail.
template <typename V, typename Step>
void for_each_vector(int64_t begin, int64_t end, const Step& step) {
  constexpr int64_t width = Math<V>::kWidth;
  int64_t i = begin;
  for (; i + width <= end; i += width) step(V{}, i);
  for (; i < end; ++i) step(typename Math<V>::Scalar{}, i);
}

// Sum over chunks of [0, n) of per-element steps, merged in chunk order.
template <typename T, typename V, typename Accumulate>
Totals<T> reduce_chunks(int64_t n, const Accumulate& accumulate) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<Totals<T>> partial(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Totals<V> vector_totals;
      Totals<T> scalar_totals;
      for_each_vector<V>(c * kChunk, std::min(n, (c + 1) * kChunk), [&](auto lane, int64_t i) {
        if constexpr (std::is_same_v<decltype(lane), V>) {
          accumulate(vector_totals, i);
        } else {
          accumulate(scalar_totals, i);
        }
      });
      partial[c] = lanes_merged(vector_totals);
      partial[c].merge(scalar_totals);
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
        using T = acc_type<scalar_t>;
        using V = vector_type<scalar_t>;
        const auto s = scores_of<scalar_t>(p);
        const T g = grad.item<T>();
        const T neg_lse = p.estimator == Estimator::DV ? reduce_totals(s).neg_lse.value() : T(0);
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

}  // namespace

TORCH_LIBRARY_IMPL(dim_fused, CPU, m) {
  m.impl("mi_bound", &mi_bound_cpu);
  m.impl("mi_bound_backward", &mi_bound_backward_cpu);
}

}  // namespace dim_fused
