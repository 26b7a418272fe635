// Host/device math shared by the CPU and CUDA kernels: the estimator terms of
// DESIGN.md section 1, their derivatives, an online logsumexp and the
// per-element accumulate / gradient steps of the `mi_bound` reduction. Keeping
// them in one header means the CPU tests exercise the very formulas the GPU
// runs.
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

// Same order as dim_fused.ESTIMATORS.
enum class Estimator : int { JSD, GAN, KL, RKL, H2, X2, W1, DV, InfoNCE };

constexpr double kLog2 = 0.69314718055994530942;

// max(x, 0) + log1p(exp(-|x|)): never overflows, exact for large |x|.
template <typename T>
DIM_HD T softplus(T x) {
  return std::fmax(x, T(0)) + std::log1p(std::exp(-std::fabs(x)));
}

template <typename T>
DIM_HD T sigmoid(T x) {
  const T e = std::exp(-std::fabs(x));
  return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// Ep(t): what a positive score contributes (DV's positive term is t).
template <typename T>
DIM_HD T positive_term(Estimator e, T t) {
  switch (e) {
    case Estimator::JSD: return T(kLog2) - softplus(-t);
    case Estimator::GAN: return -softplus(-t);
    case Estimator::RKL: return -std::exp(-t);
    case Estimator::H2: return T(1) - std::exp(-t);
    case Estimator::X2: return t * t;
    default: return t;  // KL, W1, DV
  }
}

template <typename T>
DIM_HD T positive_term_grad(Estimator e, T t) {
  switch (e) {
    case Estimator::JSD:
    case Estimator::GAN: return sigmoid(-t);
    case Estimator::RKL:
    case Estimator::H2: return std::exp(-t);
    case Estimator::X2: return T(2) * t;
    default: return T(1);
  }
}

// Eq(t): what a negative score contributes (not used by DV and InfoNCE).
template <typename T>
DIM_HD T negative_term(Estimator e, T t) {
  switch (e) {
    case Estimator::JSD: return softplus(t) - T(kLog2);
    case Estimator::GAN: return softplus(t);
    case Estimator::KL: return std::exp(t - T(1));
    case Estimator::RKL: return t - T(1);
    case Estimator::H2: return std::exp(t) - T(1);
    case Estimator::X2: {
      const T a = std::fabs(t) + T(1);
      return T(-0.5) * a * a;
    }
    default: return t;  // W1
  }
}

template <typename T>
DIM_HD T negative_term_grad(Estimator e, T t) {
  switch (e) {
    case Estimator::JSD:
    case Estimator::GAN: return sigmoid(t);
    case Estimator::KL: return std::exp(t - T(1));
    case Estimator::H2: return std::exp(t);
    // d/dt of -0.5 (|t| + 1)^2, with the subgradient 0 at t = 0.
    case Estimator::X2: return -(std::fabs(t) + T(1)) * T((t > T(0)) - (t < T(0)));
    default: return T(1);  // RKL, W1
  }
}

// Running (max, sum of exp(x - max)); mergeable in any order.
template <typename T>
struct LogSumExp {
  T max = -std::numeric_limits<T>::infinity();
  T sum = T(0);

  DIM_HD void merge(T other_max, T other_sum) {
    if (other_sum == T(0)) return;
    if (sum == T(0)) {
      max = other_max;
      sum = other_sum;
    } else if (other_max > max) {
      sum = sum * std::exp(max - other_max) + other_sum;
      max = other_max;
    } else {
      sum += other_sum * std::exp(other_max - max);
    }
  }
  DIM_HD void add(T x) { merge(x, T(1)); }
  DIM_HD T value() const { return max + std::log(sum); }
};

// Everything the estimate needs, reduced over the scores.
template <typename T>
struct Totals {
  T pos_sum = T(0);  // sum of Ep(pos); for InfoNCE, of pos - logsumexp(row)
  T neg_sum = T(0);  // sum of Eq(neg) (f-measures)
  LogSumExp<T> neg_lse;  // logsumexp of neg (DV)

  DIM_HD void merge(const Totals& o) {
    pos_sum += o.pos_sum;
    neg_sum += o.neg_sum;
    neg_lse.merge(o.neg_lse.max, o.neg_lse.sum);
  }
};

// The problem a kernel sees: flat contiguous scores. For InfoNCE, neg is
// (K, n_pos) and position i is contrasted with neg[k * n_pos + i].
template <typename scalar_t>
struct Scores {
  const scalar_t* pos;
  const scalar_t* neg;
  int64_t n_pos;
  int64_t n_neg;
  int64_t num_negatives;
  Estimator estimator;

  // Elements a kernel iterates over: one per positive for InfoNCE (it reads
  // the K aligned negatives), max(n_pos, n_neg) otherwise.
  DIM_HD int64_t extent() const {
    return estimator == Estimator::InfoNCE ? n_pos : (n_pos > n_neg ? n_pos : n_neg);
  }

  template <typename T>
  DIM_HD T infonce_row_lse(int64_t i) const {
    LogSumExp<T> lse;
    lse.add(T(pos[i]));
    for (int64_t k = 0; k < num_negatives; ++k) lse.add(T(neg[k * n_pos + i]));
    return lse.value();
  }

  template <typename T>
  DIM_HD void accumulate(Totals<T>& t, int64_t i) const {
    if (estimator == Estimator::InfoNCE) {
      if (i < n_pos) t.pos_sum += T(pos[i]) - infonce_row_lse<T>(i);
      return;
    }
    if (i < n_pos) t.pos_sum += positive_term(estimator, T(pos[i]));
    if (i < n_neg) {
      if (estimator == Estimator::DV) {
        t.neg_lse.add(T(neg[i]));
      } else {
        t.neg_sum += negative_term(estimator, T(neg[i]));
      }
    }
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

  // d(estimate)/d(scores) times grad at element i; neg_lse is only read by DV.
  template <typename T>
  DIM_HD void gradient(int64_t i, T grad, T neg_lse, scalar_t* dpos, scalar_t* dneg) const {
    const T g_pos = grad / T(n_pos);
    if (estimator == Estimator::InfoNCE) {
      if (i >= n_pos) return;
      const T lse = infonce_row_lse<T>(i);
      dpos[i] = scalar_t(g_pos * (T(1) - std::exp(T(pos[i]) - lse)));
      for (int64_t k = 0; k < num_negatives; ++k) {
        const int64_t j = k * n_pos + i;
        dneg[j] = scalar_t(-g_pos * std::exp(T(neg[j]) - lse));
      }
      return;
    }
    if (i < n_pos) dpos[i] = scalar_t(g_pos * positive_term_grad(estimator, T(pos[i])));
    if (i < n_neg) {
      // d/dx of log mean exp(neg) is softmax(neg): no 1/n_neg factor for DV.
      const T x = T(neg[i]);
      const T d = estimator == Estimator::DV ? std::exp(x - neg_lse)
                                             : negative_term_grad(estimator, x) / T(n_neg);
      dneg[i] = scalar_t(-grad * d);
    }
  }
};

}  // namespace dim_fused
