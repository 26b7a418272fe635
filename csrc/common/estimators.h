// Host/device math shared by the CPU and CUDA kernels: the estimator terms of
// docs/design.md ("Estimators"), their derivatives, an online logsumexp and the
// accumulate / gradient steps of the `mi_bound` reduction. Keeping them in one
// header means the CPU tests exercise the very formulas the GPU runs.
//
// Every formula is written over a value type V through Math<V>: a scalar float
// or double here (CUDA threads, CPU tails), a SIMD vector on the CPU, where
// vectorized.h specialises Math for at::vec::Vectorized.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#ifdef __CUDACC__
#define DIM_HD __host__ __device__ __forceinline__
#else
#define DIM_HD inline
#endif

namespace dim_fused {

enum class Estimator : int { JSD, GAN, KL, RKL, H2, X2, W1, DV, InfoNCE };

constexpr double kLog2 = 0.69314718055994530942;

// The primitives the formulas need, for a scalar T; vectorized.h adds SIMD vectors.
template <typename T>
struct Math {
  using Scalar = T;
  static constexpr int kWidth = 1;
  template <typename scalar_t>
  static DIM_HD T load(const scalar_t* p) {
    return T(*p);
  }
  template <typename scalar_t>
  static DIM_HD void store(scalar_t* p, T v) {
    *p = scalar_t(v);
  }
  static DIM_HD T exp(T x) { return std::exp(x); }
  static DIM_HD T log(T x) { return std::log(x); }
  static DIM_HD T log1p(T x) { return std::log1p(x); }
  static DIM_HD T abs(T x) { return std::fabs(x); }
  static DIM_HD T max(T a, T b) { return std::fmax(a, b); }
  static DIM_HD T sign(T x) { return T((x > T(0)) - (x < T(0))); }
  static DIM_HD T if_nonneg(T x, T a, T b) { return x >= T(0) ? a : b; }
  static DIM_HD T if_zero(T x, T a, T b) { return x == T(0) ? a : b; }
  static DIM_HD T if_finite(T x, T a, T b) { return std::fabs(x) < kInfinity ? a : b; }
  // max(x, 0) that keeps a NaN (std::fmax would turn it into 0).
  static DIM_HD T relu(T x) { return x > T(0) || x != x ? x : T(0); }
  static constexpr T kInfinity = std::numeric_limits<T>::infinity();
};

// max(x, 0) + log1p(exp(-|x|)): never overflows, exact for large |x|.
template <typename V>
DIM_HD V softplus(V x) {
  using M = Math<V>;
  return M::max(x, V(0)) + M::log1p(M::exp(-M::abs(x)));
}

template <typename V>
DIM_HD V sigmoid(V x) {
  using M = Math<V>;
  const V e = M::exp(-M::abs(x));
  return M::if_nonneg(x, V(1) / (V(1) + e), e / (V(1) + e));
}

// Ep(t): what a positive score contributes (DV's positive term is t).
template <typename V>
DIM_HD V positive_term(Estimator e, V t) {
  using M = Math<V>;
  switch (e) {
    case Estimator::JSD: return V(kLog2) - softplus(-t);
    case Estimator::GAN: return -softplus(-t);
    case Estimator::RKL: return -M::exp(-t);
    case Estimator::H2: return V(1) - M::exp(-t);
    case Estimator::X2: return t * t;
    default: return t;  // KL, W1, DV
  }
}

template <typename V>
DIM_HD V positive_term_grad(Estimator e, V t) {
  using M = Math<V>;
  switch (e) {
    case Estimator::JSD:
    case Estimator::GAN: return sigmoid(-t);
    case Estimator::RKL:
    case Estimator::H2: return M::exp(-t);
    case Estimator::X2: return V(2) * t;
    default: return V(1);
  }
}

// Eq(t): what a negative score contributes (not used by DV and InfoNCE).
template <typename V>
DIM_HD V negative_term(Estimator e, V t) {
  using M = Math<V>;
  switch (e) {
    case Estimator::JSD: return softplus(t) - V(kLog2);
    case Estimator::GAN: return softplus(t);
    case Estimator::KL: return M::exp(t - V(1));
    case Estimator::RKL: return t - V(1);
    case Estimator::H2: return M::exp(t) - V(1);
    case Estimator::X2: {
      const V a = M::abs(t) + V(1);
      return V(-0.5) * a * a;
    }
    default: return t;  // W1
  }
}

template <typename V>
DIM_HD V negative_term_grad(Estimator e, V t) {
  using M = Math<V>;
  switch (e) {
    case Estimator::JSD:
    case Estimator::GAN: return sigmoid(t);
    case Estimator::KL: return M::exp(t - V(1));
    case Estimator::H2: return M::exp(t);
    // d/dt of -0.5 (|t| + 1)^2, with the subgradient 0 at t = 0.
    case Estimator::X2: return -(M::abs(t) + V(1)) * M::sign(t);
    default: return V(1);  // RKL, W1
  }
}

// Running logsumexp as (max, sum of exp(x - shift(max))) with shift(m) = m for a
// finite m and 0 otherwise, so that -inf and +inf scores follow IEEE semantics
// (log of an empty sum is -inf, a +inf score makes the result +inf) instead of
// computing exp(inf - inf). value() = shift(max) + log(sum).
template <typename V>
struct LogSumExp {
  V max = V(-Math<V>::kInfinity);
  V sum = V(0);

  static DIM_HD V shift(V m) { return Math<V>::if_finite(m, m, V(0)); }
  // sum, rescaled from shift(from) to shift(to); an empty sum stays 0.
  static DIM_HD V rescaled(V s, V from, V to) {
    return Math<V>::if_zero(s, V(0), s * Math<V>::exp(shift(from) - shift(to)));
  }
  DIM_HD void add(V x) {
    const V new_max = Math<V>::max(max, x);
    sum = rescaled(sum, max, new_max) + Math<V>::exp(x - shift(new_max));
    max = new_max;
  }
  DIM_HD void merge(V other_max, V other_sum) {
    const V new_max = Math<V>::max(max, other_max);
    sum = rescaled(sum, max, new_max) + rescaled(other_sum, other_max, new_max);
    max = new_max;
  }
  DIM_HD V value() const { return shift(max) + Math<V>::log(sum); }
};

// Everything the estimate needs, reduced over the scores.
template <typename V>
struct Totals {
  V pos_sum = V(0);      // sum of Ep(pos); for InfoNCE, of pos - logsumexp(row)
  V neg_sum = V(0);      // sum of Eq(neg) (f-measures)
  LogSumExp<V> neg_lse;  // logsumexp of neg (DV)

  DIM_HD void merge(const Totals& o) {
    pos_sum += o.pos_sum;
    neg_sum += o.neg_sum;
    neg_lse.merge(o.neg_lse.max, o.neg_lse.sum);
  }
};

// A row of per-row statistics in memory (dot_product_mi keeps one per global
// row; the Triton kernels write the same columns, see dim_fused/ops/common/triton_math.py).
enum RowStat : int { kPosSum, kNegSum, kNegMax, kNegSumExp, kRowStats };

template <typename T>
DIM_HD Totals<T> load_totals(const T* row) {
  Totals<T> t;
  t.pos_sum = row[kPosSum];
  t.neg_sum = row[kNegSum];
  t.neg_lse.max = row[kNegMax];
  t.neg_lse.sum = row[kNegSumExp];
  return t;
}

template <typename T>
DIM_HD void store_totals(const Totals<T>& t, T* row) {
  row[kPosSum] = t.pos_sum;
  row[kNegSum] = t.neg_sum;
  row[kNegMax] = t.neg_lse.max;
  row[kNegSumExp] = t.neg_lse.sum;
}

// One score's share of Totals: Ep (t for DV) for a positive; Eq for an
// f-measure's negative, the logsumexp for DV's and InfoNCE's negatives.
template <typename V>
DIM_HD void accumulate_positive_term(Estimator e, Totals<V>& t, V s) {
  t.pos_sum += positive_term(e, s);
}

template <typename V>
DIM_HD void accumulate_negative_term(Estimator e, Totals<V>& t, V s) {
  if (e == Estimator::DV || e == Estimator::InfoNCE) {
    t.neg_lse.add(s);
  } else {
    t.neg_sum += negative_term(e, s);
  }
}

// Encode-and-dot pairs (dot_product_mi): d(estimate)/d(score) given the
// per-row coefficients the driver derives from the forward's statistics, laid
// out in memory as these columns (one row per global).
enum DotCoef : int { kPosScale, kNegScale, kNegLse, kShift, kCoefs };

// Positive: `scale` is grad / #positives; InfoNCE also reads the row's
// negative logsumexp (the softmax weight of the positive is sigmoid(s - lse)).
template <typename V>
DIM_HD V dot_positive_grad(Estimator e, V s, V scale, V row_neg_lse) {
  switch (e) {
    case Estimator::InfoNCE: return scale * sigmoid(row_neg_lse - s);
    case Estimator::DV: return scale;
    default: return scale * positive_term_grad(e, s);
  }
}

// Negative: f-measures, -scale * Eq'(s) with scale = grad / #negatives; DV and
// InfoNCE, -scale * exp(s - lse + shift): DV's softmax over every negative
// (scale = grad, lse over all negatives, shift = 0); InfoNCE's sum over the
// row's positives p of their softmax weights exp(s - lse_p), with lse the row's
// negative logsumexp and shift = log sum_p exp(lse - lse_p), small and exact
// where the softmax saturates.
template <typename V>
DIM_HD V dot_negative_grad(Estimator e, V s, V scale, V lse, V shift) {
  if (e == Estimator::DV || e == Estimator::InfoNCE)
    return -scale * Math<V>::exp((s - lse) + shift);
  return -scale * negative_term_grad(e, s);
}

// The problem a kernel sees: flat contiguous scores. For InfoNCE, neg is
// (K, n_pos) and position i is contrasted with neg[k * n_pos + i]. The
// element steps take V = a scalar (one element at i) or a SIMD vector (the
// Math<V>::kWidth elements from i); callers keep them in range.
template <typename scalar_t>
struct Scores {
  const scalar_t* pos;
  const scalar_t* neg;
  int64_t n_pos;
  int64_t n_neg;
  int64_t num_negatives;
  Estimator estimator;

  DIM_HD bool per_positive() const { return estimator == Estimator::InfoNCE; }

  template <typename V>
  DIM_HD V infonce_row_lse(int64_t i) const {
    LogSumExp<V> lse;
    lse.add(Math<V>::load(pos + i));
    for (int64_t k = 0; k < num_negatives; ++k) lse.add(Math<V>::load(neg + k * n_pos + i));
    return lse.value();
  }

  template <typename V>
  DIM_HD void accumulate_positive(Totals<V>& t, int64_t i) const {
    const V p = Math<V>::load(pos + i);
    if (per_positive()) {
      t.pos_sum += p - infonce_row_lse<V>(i);
    } else {
      accumulate_positive_term(estimator, t, p);
    }
  }

  // Not for InfoNCE, whose negatives are read with their positive.
  template <typename V>
  DIM_HD void accumulate_negative(Totals<V>& t, int64_t i) const {
    accumulate_negative_term(estimator, t, Math<V>::load(neg + i));
  }

  template <typename T>
  DIM_HD T estimate(const Totals<T>& t) const {
    const T pos_mean = t.pos_sum / T(n_pos);
    switch (estimator) {
      case Estimator::InfoNCE: return pos_mean + std::log(T(num_negatives + 1));
      case Estimator::DV: return pos_mean - (t.neg_lse.value() - std::log(T(n_neg)));
      default: return pos_mean - t.neg_sum / T(n_neg);
    }
  }

  // d(estimate)/d(pos) times grad; for InfoNCE also the aligned negatives.
  template <typename V>
  DIM_HD void positive_gradient(int64_t i, V grad, scalar_t* dpos, scalar_t* dneg) const {
    using M = Math<V>;
    const V g = grad / V(typename M::Scalar(n_pos));
    const V p = M::load(pos + i);
    if (!per_positive()) {
      M::store(dpos + i, g * positive_term_grad(estimator, p));
      return;
    }
    const V lse = infonce_row_lse<V>(i);
    M::store(dpos + i, g * (V(1) - M::exp(p - lse)));
    for (int64_t k = 0; k < num_negatives; ++k) {
      const int64_t j = k * n_pos + i;
      M::store(dneg + j, -g * M::exp(M::load(neg + j) - lse));
    }
  }

  // Not for InfoNCE; neg_lse is only read by DV.
  template <typename V>
  DIM_HD void negative_gradient(int64_t i, V grad, V neg_lse, scalar_t* dneg) const {
    using M = Math<V>;
    const V x = M::load(neg + i);
    // d/dx of log mean exp(neg) is softmax(neg): no 1/n_neg factor for DV.
    const V d = estimator == Estimator::DV
                    ? M::exp(x - neg_lse)
                    : negative_term_grad(estimator, x) / V(typename M::Scalar(n_neg));
    M::store(dneg + i, -grad * d);
  }
};

}  // namespace dim_fused
