// SIMD for the CPU kernels: Math<V> (see estimators.h) for at::vec vectors,
// and the loops that run a step on full vectors and then on the scalar tail.
// float and double run vectorised; half and bfloat16 run scalar steps in float, but in
// binary_map, which converts them in registers.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "estimators.h"

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
  static V if_zero(V x, V a, V b) { return V::blendv(b, a, x == V(0)); }
  static V if_finite(V x, V a, V b) { return V::blendv(b, a, x.abs() < V(kInfinity)); }
  static V relu(V x) { return at::vec::maximum(x, V(0)); }  // keeps NaN
  static constexpr T kInfinity = std::numeric_limits<T>::infinity();
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

// Totals kept per SIMD lane plus a scalar tail; merged() folds the lanes in a
// fixed order.
template <typename V>
struct LaneTotals {
  using T = typename Math<V>::Scalar;
  static constexpr int64_t kWidth = Math<V>::kWidth;
  Totals<V> vectors;
  Totals<T> tail;

  // step(totals, i) for i in [begin, end): one call per full vector, then per scalar.
  template <typename Step>
  void add_indices(int64_t begin, int64_t end, const Step& step) {
    int64_t i = begin;
    if constexpr (kWidth > 1) {
      for (; i + kWidth <= end; i += kWidth) step(vectors, i);
    }
    for (; i < end; ++i) step(tail, i);
  }
  // step(totals, value) for the values data[begin, end).
  template <typename Step>
  void add(const T* data, int64_t begin, int64_t end, const Step& step) {
    int64_t i = begin;
    if constexpr (kWidth > 1) {
      for (; i + kWidth <= end; i += kWidth) step(vectors, Math<V>::load(data + i));
    }
    for (; i < end; ++i) step(tail, data[i]);
  }
  Totals<T> merged() const {
    Totals<T> out = lanes_merged(vectors);
    out.merge(tail);
    return out;
  }
};

// data[i] = f(data[i]) for i in [begin, end), on SIMD vectors and then the tail.
template <typename T, typename F>
void transform(T* data, int64_t begin, int64_t end, const F& f) {
  using V = at::vec::Vectorized<T>;
  int64_t i = begin;
  for (; i + V::size() <= end; i += V::size()) f(V::loadu(data + i)).store(data + i);
  for (; i < end; ++i) data[i] = f(data[i]);
}

// v stored at p past the caches (a non-temporal store) where p allows it (AVX2, 32-byte
// aligned), else an ordinary store. For rows a pass rewrites while the other core holds them
// (a GEMM of both threads read them after the last write): an ordinary store waits for that
// core to give up each line, a streaming one does not. Call stream_fence() before the data
// is read by another thread.
template <typename T>
void stream_store(const at::vec::Vectorized<T>& v, T* p) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
  if (reinterpret_cast<std::uintptr_t>(p) % 32 == 0) {
    if constexpr (std::is_same_v<T, float>) {
      _mm256_stream_ps(p, v);
      return;
    } else if constexpr (std::is_same_v<T, double>) {
      _mm256_stream_pd(p, v);
      return;
    } else if constexpr (std::is_convertible_v<at::vec::Vectorized<T>, __m256i>) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
      return;
    }
  }
#endif
  v.store(p);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__)
  _mm_sfence();
#endif
}

// Asks for the cache lines of [p, p + n) ahead of their use. For the passes that split rows
// by columns between the threads: each thread reads a part of every row, a run the hardware
// prefetcher, which trains within a 4 KiB page, most likely loses across rows (the gain is
// measured, the reason inferred: docs/design.md, "Two threads, far apart").
template <typename T>
void prefetch(const T* p, int64_t n) {
  constexpr int64_t kLine = 64;
  const char* const end = reinterpret_cast<const char*>(p + n);
  for (const char* line = reinterpret_cast<const char*>(p); line < end; line += kLine) {
    __builtin_prefetch(line);
  }
}

// out[i] = f(a[i], b[i]) for i in [0, n), with f over float or double SIMD vectors (and
// scalars for the tail): 16-bit values are converted to float in registers, a 16-bit vector
// making two float vectors.
// With `streaming`, out's full vectors are written with stream_store.
template <typename scalar_t, typename F>
void binary_map(const scalar_t* a, const scalar_t* b, scalar_t* out, int64_t n, const F& f,
                bool streaming = false) {
  using T = acc_type<scalar_t>;
  using V = at::vec::Vectorized<scalar_t>;
  const auto put = [&](const V& v, scalar_t* p) {
    if (streaming) {
      stream_store(v, p);
    } else {
      v.store(p);
    }
  };
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    for (; i + V::size() <= n; i += V::size()) put(f(V::loadu(a + i), V::loadu(b + i)), out + i);
  } else {
    for (; i + V::size() <= n; i += V::size()) {
      const auto [a_lo, a_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(a + i));
      const auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(b + i));
      put(at::vec::convert_from_float<scalar_t>(f(a_lo, b_lo), f(a_hi, b_hi)), out + i);
    }
  }
  for (; i < n; ++i) out[i] = scalar_t(f(T(a[i]), T(b[i])));
}

template <typename V, typename Step>
Totals<typename Math<V>::Scalar> reduce_range(int64_t begin, int64_t end, const Step& step) {
  LaneTotals<V> totals;
  totals.add_indices(begin, end, step);
  return totals.merged();
}

}  // namespace cpu
}  // namespace dim_fused
