"""Differential privacy of federated queries: calibration (OpenDP) and distributed noise shares.

**Mechanism.** Every released per-group aggregate (distinct subjects, joined rows, each clipped
SUM) gets discrete Laplace noise (the two-sided geometric distribution) of scale b, with
P(N = x) ∝ exp(−|x| / b). It is ε-DP for an integer query of L1 sensitivity Δ when b = Δ / ε.
The scale is taken from OpenDP: :func:`scale_for` binary-searches ``make_laplace`` over the
integer domain (OpenDP's discrete Laplace) for the smallest b whose privacy map gives at most
ε at ``d_in = Δ`` — the calibration is the library's, not ours. Why discrete Laplace: the
values are integers under BFV (no floating point to leak), pure ε (no δ) composes by simple
addition in the ledger, and it is infinitely divisible, which the distributed noise needs.

**Distributed noise.** Discrete Laplace(b) is Y₁ − Y₂ with Y₁, Y₂ geometric (NB(1, p),
p = 1 − e^(−1/b) the success probability); NB is infinitely divisible: the sum of n independent
NB(1/n, p) is NB(1, p). So each of the n noise-adding parties (every provider of the query and
the coordinator) draws its share Y₁ᵢ − Y₂ᵢ with Y ~ NB(1/n, p); the shares' sum has exactly the
mechanism's distribution, and no party knows the total (each knows only its own share; the
requester knows none). Providers add their shares encrypted, the coordinator in its masks.

**Budget split.** A query releases m vectors per group (``subjects``, ``rows``, one per SUM
column); each gets ε/m (sequential composition), groups are disjoint in the requester's rows
(parallel composition), and the suppression bit [noisy count < k] is post-processing of the
noisy distinct-subject count, free.

**Clamping.** Each share is clamped to ±:func:`share_bound` (48·b + 1): the probability that any
clamp acts is below 2·e^(−48) per share, and the bound lets the noisy count fit the threshold
circuit (``query_release.dp_threshold_shift``).

Randomness is a :class:`NoiseSource`: production draws from a ``numpy`` generator seeded from
``secrets`` (:func:`fresh_source`); tests inject a seeded or constant source. The numpy sampler
works in floating point (gamma–Poisson mixture); the distribution is the mechanism's up to that.
"""
from __future__ import annotations

import functools
import math
import secrets
from typing import Protocol

import numpy as np

from pc_common.errors import InvalidInput

#: The ε a single query may ask for (per query; budgets are the grants').
MIN_EPSILON, MAX_EPSILON = 0.01, 10.0
#: In a DP query a subject's matched provider rows count at most this many (COUNT(*) sensitivity).
DP_ROW_CAP = 8
SHARE_TAIL = 48


class NoiseSource(Protocol):
    def share(self, scale: float, parties: int, size: int) -> np.ndarray:
        """``size`` independent noise shares (int64) of one of ``parties`` noise-adding parties."""


class NegativeBinomialSource:
    """Shares Y₁ − Y₂, Y ~ NB(1/parties, 1 − e^(−1/scale)), clamped (module docstring)."""

    def __init__(self, generator: np.random.Generator):
        self._g = generator

    def share(self, scale: float, parties: int, size: int) -> np.ndarray:
        if scale <= 0 or parties < 1:
            raise InvalidInput("noise scale and party count must be positive")
        p = -math.expm1(-1.0 / scale)          # success probability, accurate for large scales
        r = 1.0 / parties
        y = self._g.negative_binomial(r, p, size=(2, size)).astype(np.int64)
        bound = share_bound(scale)
        return np.clip(y[0] - y[1], -bound, bound)


def fresh_source() -> NoiseSource:
    """Production randomness: a generator seeded with 256 bits from ``secrets``. Tests replace it."""
    return NegativeBinomialSource(np.random.Generator(np.random.PCG64(secrets.randbits(256))))


def share_bound(scale: float) -> int:
    return int(math.ceil(SHARE_TAIL * scale)) + 1


def check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) \
            or not MIN_EPSILON <= epsilon <= MAX_EPSILON:
        raise InvalidInput(f"epsilon must be a number from {MIN_EPSILON} to {MAX_EPSILON}")
    return float(epsilon)


@functools.lru_cache(maxsize=256)
def scale_for(epsilon: float, sensitivity: int) -> float:
    """The discrete Laplace scale giving ``epsilon``-DP at L1 sensitivity ``sensitivity`` (OpenDP)."""
    import opendp.prelude as dp     # imported here: loading the library costs a moment

    dp.enable_features("contrib")
    if sensitivity < 1:
        raise InvalidInput("a DP aggregate needs a positive sensitivity")

    def make(scale: float):
        return dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=scale)
    return float(dp.binary_search_param(make, d_in=int(sensitivity), d_out=float(epsilon)))


def vector_epsilon(epsilon: float, vectors: int) -> float:
    """ε of each of a query's ``vectors`` released aggregate vectors (sequential composition)."""
    return epsilon / vectors


def subject_sensitivity(n_categories: int = 0) -> int:
    """How many groups' distinct-subject counts one subject changes: 1, or with a provider GROUP BY
    at most one per category of its (at most DP_ROW_CAP) matched rows."""
    return min(n_categories, DP_ROW_CAP) if n_categories else 1


def subject_scale(epsilon: float, vectors: int, n_categories: int = 0) -> float:
    """Scale of the distinct-subject counts: public, from the signed ε, the SQL and the categories."""
    return scale_for(vector_epsilon(epsilon, vectors), subject_sensitivity(n_categories))


def sum_sensitivity(low: int, high: int) -> int:
    """A clipped per-subject SUM in [low, high] (plan units) changes by at most max(|low|, |high|)."""
    return max(abs(int(low)), abs(int(high)), 1)


__all__ = ["DP_ROW_CAP", "MAX_EPSILON", "MIN_EPSILON", "NegativeBinomialSource", "NoiseSource", "check_epsilon",
           "fresh_source", "scale_for", "share_bound", "subject_scale", "subject_sensitivity", "sum_sensitivity",
           "vector_epsilon"]
