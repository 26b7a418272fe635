// SIMD for the CPU kernels: Math<V> (see ../estimators.h) for at::vec vectors,
// and the loops that run a step on full vectors and then on the scalar tail.
// float and double run vectorised; half and bfloat16 run scalar steps in float.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../estimators.h"

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

namespace cpu {

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

// Totals kept per SIMD lane plus a scalar tail; step(totals, i) is called with
// whichever fits at i. merged() folds the lanes in a fixed order.
template <typename V>
struct LaneTotals {
  using T = typename Math<V>::Scalar;
  Totals<V> vectors;
  Totals<T> tail;

  template <typename Step>
  void add(int64_t begin, int64_t end, const Step& step) {
    for_each_vector<V>(begin, end, [&](auto lane, int64_t i) {
      if constexpr (std::is_same_v<decltype(lane), V>) {
        step(vectors, i);
      } else {
        step(tail, i);
      }
    });
  }
  Totals<T> merged() const {
    Totals<T> out = lanes_merged(vectors);
    out.merge(tail);
    return out;
  }
};

template <typename V, typename Step>
Totals<typename Math<V>::Scalar> reduce_range(int64_t begin, int64_t end, const Step& step) {
  LaneTotals<V> totals;
  totals.add(begin, end, step);
  return totals.merged();
}

}  // namespace cpu
}  // namespace dim_fused
