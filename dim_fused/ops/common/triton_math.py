"""Estimator terms and derivatives for Triton kernels: the same formulas as
csrc/common/estimators.h. Only tl.exp / tl.log are used (no libdevice), so the kernels
also run under the Triton interpreter."""

import triton
import triton.language as tl

from .estimators import ESTIMATORS

# Estimators are passed to kernels as their index in dim_fused.ESTIMATORS.
JSD = tl.constexpr(ESTIMATORS.index("jsd"))
GAN = tl.constexpr(ESTIMATORS.index("gan"))
KL = tl.constexpr(ESTIMATORS.index("kl"))
RKL = tl.constexpr(ESTIMATORS.index("rkl"))
H2 = tl.constexpr(ESTIMATORS.index("h2"))
X2 = tl.constexpr(ESTIMATORS.index("x2"))
W1 = tl.constexpr(ESTIMATORS.index("w1"))
DV = tl.constexpr(ESTIMATORS.index("dv"))
INFONCE = tl.constexpr(ESTIMATORS.index("infonce"))

# The columns of a row of statistics, as csrc/common/estimators.h's RowStat (tests check they agree).
POS_SUM = tl.constexpr(0)
NEG_SUM = tl.constexpr(1)
NEG_MAX = tl.constexpr(2)
NEG_SUM_EXP = tl.constexpr(3)
ROW_STATS = tl.constexpr(4)

LOG2 = tl.constexpr(0.6931471805599453)


@triton.jit
def lse_shift(m):
    """The shift of a running logsumexp with maximum m: m if finite, else 0 (see
    LogSumExp in csrc/common/estimators.h), so that -inf and +inf follow IEEE semantics."""
    return tl.where(tl.abs(m) < float("inf"), m, 0.0)


@triton.jit
def lse_rescaled(s, old_max, new_max):
    """A running sum of exp(x - shift(old_max)) rescaled to shift(new_max); 0 stays 0."""
    return tl.where(s == 0.0, 0.0, s * tl.exp(lse_shift(old_max) - lse_shift(new_max)))


@triton.jit
def lse_of(total, top):
    """A running logsumexp's value, shift(top) + log(total): -inf for an empty sum (without
    the interpreter's log(0) warning), NaN kept."""
    return tl.where(total == 0, -float("inf"), lse_shift(top) + tl.log(tl.where(total == 0, 1.0, total)))


@triton.jit
def softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def positive_term(t, EST: tl.constexpr):
    if EST == JSD:
        r = LOG2 - softplus(-t)
    elif EST == GAN:
        r = -softplus(-t)
    elif EST == RKL:
        r = -tl.exp(-t)
    elif EST == H2:
        r = 1.0 - tl.exp(-t)
    elif EST == X2:
        r = t * t
    else:  # KL, W1, DV
        r = t
    return r


@triton.jit
def positive_term_grad(t, EST: tl.constexpr):
    if EST == JSD or EST == GAN:
        r = sigmoid(-t)
    elif EST == RKL or EST == H2:
        r = tl.exp(-t)
    elif EST == X2:
        r = 2.0 * t
    else:
        r = tl.full(t.shape, 1.0, t.dtype)
    return r


@triton.jit
def negative_term(t, EST: tl.constexpr):
    if EST == JSD:
        r = softplus(t) - LOG2
    elif EST == GAN:
        r = softplus(t)
    elif EST == KL:
        r = tl.exp(t - 1.0)
    elif EST == RKL:
        r = t - 1.0
    elif EST == H2:
        r = tl.exp(t) - 1.0
    elif EST == X2:
        a = tl.abs(t) + 1.0
        r = -0.5 * a * a
    else:  # W1
        r = t
    return r


@triton.jit
def negative_term_grad(t, EST: tl.constexpr):
    if EST == JSD or EST == GAN:
        r = sigmoid(t)
    elif EST == KL:
        r = tl.exp(t - 1.0)
    elif EST == H2:
        r = tl.exp(t)
    elif EST == X2:
        sign = tl.where(t > 0, 1.0, tl.where(t < 0, -1.0, 0.0))
        r = -(tl.abs(t) + 1.0) * sign
    else:  # RKL, W1
        r = tl.full(t.shape, 1.0, t.dtype)
    return r
