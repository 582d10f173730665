"""Coordinator side: group sums and blinding with public material only.

This module must never be able to touch a secret key: it imports only the public
halves of the backends (``backend``, and through it ``paillier``/``bfv``), never
``*_keys``; it accepts only ``PublicContext`` objects. A test checks the imports.

Layout ("rows"): member j of group g sits at position g of row j; a provider
returns one ``CipherVector`` per row, so a group's sum is a plain element-wise
addition of rows across members and providers — no rotations, no Galois keys.
Rows may have different lengths (sort groups by size, largest first, and row j
only needs the groups with more than j members); missing positions count as 0.

Every blinded output is rerandomised (a fresh encryption of zero added).
All random factors come from ``rng`` (``random.Random``-like: ``randrange``,
``getrandbits``), ``secrets.SystemRandom()`` unless a test injects one.
What the decrypted values reveal is documented in docs/homomorphic.md.
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from pc_common.errors import CryptoError, InvalidInput, OverflowDetected

from .backend import CipherVector, HeBackend, IntVector, PublicContext, as_int_list, get_backend

# ρ's bit length is drawn uniformly from [MIN_RHO_BITS, k] (log-uniform ρ), so the
# margin |T - S| is never recoverable to better than a factor of about two.
MIN_RHO_BITS = 8
FOLD_WEIGHT_BITS = 32

T = TypeVar("T")


class Rng(Protocol):
    def randrange(self, start: int, stop: int = ..., step: int = ...) -> int: ...

    def getrandbits(self, k: int) -> int: ...


def _rng(rng: Rng | None) -> Rng:
    return rng if rng is not None else secrets.SystemRandom()


def _backend(pub: PublicContext) -> HeBackend:
    if not isinstance(pub, PublicContext):
        raise InvalidInput("blinding takes a public context only")
    return get_backend(pub.backend_name)


def _check(pub: PublicContext, cvs: Sequence[CipherVector]) -> None:
    for cv in cvs:
        if not isinstance(cv, CipherVector) or cv.public.fingerprint != pub.fingerprint:
            raise CryptoError("ciphertext was encrypted under a different key")


def group_sum(pub: PublicContext, cipher_rows: Sequence[CipherVector]) -> CipherVector:
    """Per-group sums: the element-wise sum of all rows of all providers."""
    be = _backend(pub)
    _check(pub, cipher_rows)
    return be.sum(cipher_rows)


def zero_test(pub: PublicContext, cv: CipherVector, rng: Rng | None = None) -> CipherVector:
    """Enc(ρ_g·S_g) with ρ_g uniform in [1, m): decrypts to 0 iff S_g = 0.

    Anything else decrypts to a uniform non-zero residue (BFV: m = t is prime; for
    Paillier, S_g ≠ 0 with ρ_g·S_g ≡ 0 mod n needs a factor of n: probability < 2^-1000).
    """
    be = _backend(pub)
    _check(pub, [cv])
    r = _rng(rng)
    m = pub.plaintext_modulus
    rho = [r.randrange(1, m) for _ in range(cv.length)]
    return be.rerandomize(be.mul_plain(cv, rho))


def fold_zero_tests(
    pub: PublicContext, cvs: Sequence[CipherVector], count_bound: int, rng: Rng | None = None
) -> CipherVector:
    """One zero test for several non-negative counts: Enc(ρ_g·Σ_i w_i,g·S_i,g).

    Weights w in [1, 2^32) and 0 <= S_i <= ``count_bound`` make the weighted sum
    zero iff every S_i is zero, provided it cannot wrap (checked here; raises
    OverflowDetected otherwise). The outer ρ uniform in [1, m) then hides the
    size of the sum, as in ``zero_test``. Random weights also stop a negative
    input (outside the contract) from cancelling another, except by luck (2^-32).
    """
    be = _backend(pub)
    if not cvs:
        raise InvalidInput("nothing to fold")
    _check(pub, cvs)
    if isinstance(count_bound, bool) or not isinstance(count_bound, int) or count_bound < 0:
        raise InvalidInput("count bound must be a non-negative integer")
    k = len(cvs)
    if k * count_bound > pub.plaintext_bound:
        raise OverflowDetected("folded zero tests could leave the plaintext space")
    room = pub.plaintext_bound // max(1, k * count_bound)  # >= 1; weights w < 2^wbits <= room
    wbits = max(1, min(FOLD_WEIGHT_BITS, room.bit_length() - 1))
    r = _rng(rng)
    m = pub.plaintext_modulus
    length = max(len(cv) for cv in cvs)
    rho = [r.randrange(1, m) for _ in range(length)]
    weights = [[r.randrange(1, 1 << wbits) for _ in range(len(cv))] for cv in cvs]
    depth = pub.max_plain_mult_depth
    if depth is None or depth - max(cv.depth for cv in cvs) >= 2:
        # Two cheap steps (Paillier: short exponents, then one long one).
        folded = be.sum([be.mul_plain(cv, w) for cv, w in zip(cvs, weights)])
        out = be.mul_plain(folded, rho[: len(folded)])
    else:
        # One multiplication level only (BFV noise): fuse ρ into the weights mod m.
        out = be.sum(
            [be.mul_plain(cv, [(g * w) % m for g, w in zip(rho, ws)]) for cv, ws in zip(cvs, weights)]
        )
    return be.rerandomize(out)


def rho_bits(pub: PublicContext, value_bound: int, max_rho_bits: int | None = None) -> int:
    """Largest k with 2^k·(value_bound + 1) <= plaintext bound: ρ < 2^k never wraps.

    ρ's bit length is uniform in [min(MIN_RHO_BITS, k), k]; the width of that
    range is the blur window to state in the leakage report (``blur_window_bits``).
    OverflowDetected if k < 2.
    """
    if isinstance(value_bound, bool) or not isinstance(value_bound, int) or value_bound < 0:
        raise InvalidInput("value bound must be a non-negative integer")
    k = (pub.plaintext_bound // (value_bound + 1)).bit_length() - 1
    if max_rho_bits is not None:
        k = min(k, max_rho_bits)
    if k < 2:  # ρ must be able to reach 2 (see _draw_rho)
        raise OverflowDetected("comparison values are too large for this plaintext space")
    return k


def blur_window_bits(pub: PublicContext, value_bound: int, max_rho_bits: int | None = None) -> int:
    """How many bits of log2|T − S| the comparison blinding smears (for leakage reports)."""
    k = rho_bits(pub, value_bound, max_rho_bits)
    return k - min(MIN_RHO_BITS, k) + 1


def _draw_rho(r: Rng, k: int) -> tuple[int, int]:
    """(ρ, ρ′): ρ log-uniform in [2^(lo-1), 2^k), ρ′ uniform in [1, ρ).

    ρ′ >= 1 (allowed because ρ >= 2) means the result is never exactly 0, so
    "S = T" is not singled out; S < T still gives ρ·d − ρ′ >= ρ − ρ′ >= 1.
    """
    bits = r.randrange(min(MIN_RHO_BITS, k), k + 1)
    rho = r.randrange(1 << (bits - 1), 1 << bits)
    return rho, r.randrange(1, rho)


_SIGN = {"lt": -1, "gt": 1}


def _compare(
    pub: PublicContext,
    cv: CipherVector,
    thresholds: IntVector | int,
    value_bound: int,
    op: Literal["lt", "gt"],
    rng: Rng | None,
    max_rho_bits: int | None,
) -> CipherVector:
    be = _backend(pub)
    _check(pub, [cv])
    k = rho_bits(pub, value_bound, max_rho_bits)
    t = as_int_list(thresholds, cv.length)
    r = _rng(rng)
    sign = _SIGN[op]
    coef, plain = [], []
    for tg in t:
        rho, rho2 = _draw_rho(r, k)
        c = sign * rho
        coef.append(c)
        plain.append(-c * tg - rho2)
    return be.rerandomize(be.add_plain(be.mul_plain(cv, coef), plain))


def less_than(
    pub: PublicContext,
    cv_s: CipherVector,
    thresholds: IntVector | int,
    value_bound: int,
    rng: Rng | None = None,
    *,
    max_rho_bits: int | None = None,
) -> CipherVector:
    """Enc(ρ·(T − S) − ρ′): decrypts to a value > 0 iff S < T (S = T gives < 0).

    ``value_bound`` must bound |T − S| for every group (e.g. max|T| plus the bound
    returned by ``check_no_overflow``); OverflowDetected if no ρ >= 1 fits.
    """
    return _compare(pub, cv_s, thresholds, value_bound, "lt", rng, max_rho_bits)


def greater_than(
    pub: PublicContext,
    cv_s: CipherVector,
    thresholds: IntVector | int,
    value_bound: int,
    rng: Rng | None = None,
    *,
    max_rho_bits: int | None = None,
) -> CipherVector:
    """Enc(ρ·(S − T) − ρ′): decrypts to a value > 0 iff S > T ("exists": T = 0)."""
    return _compare(pub, cv_s, thresholds, value_bound, "gt", rng, max_rho_bits)


@dataclass(frozen=True)
class Comparison:
    """One criterion of a group: S (encrypted per group) ``op`` T (plain per group)."""

    cipher: CipherVector
    thresholds: IntVector | int
    op: Literal["lt", "gt"] = "lt"


def random_permutation(n: int, rng: Rng | None = None) -> list[int]:
    """Fisher–Yates with ``rng``."""
    r = _rng(rng)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = r.randrange(0, i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def shuffled(items: Sequence[T], rng: Rng | None = None) -> list[T]:
    """A new list with the items in random order (same order for every group)."""
    return [items[i] for i in random_permutation(len(items), rng)]


def shuffle_comparisons(
    pub: PublicContext,
    comparisons: Sequence[Comparison],
    value_bound: int,
    rng: Rng | None = None,
    *,
    max_rho_bits: int | None = None,
) -> list[CipherVector]:
    """Blind k comparisons and shuffle them *per group* (verdict mode).

    Output i at group g is criterion π_g(i) of that group, blinded as in
    ``less_than``/``greater_than``, with an independent permutation π_g per group,
    so position i says nothing about which criterion failed. One ``value_bound``
    (the largest of all criteria) is used for all, so ρ's range does not betray
    the criterion either. The permutation is fused into the blinding
    multiplication (out_i = Σ_j S_j ⊙ coef_ij + plain_i): BFV allows only one
    plaintext multiplication, so shuffling after blinding would exhaust its noise.
    """
    be = _backend(pub)
    if not comparisons:
        raise InvalidInput("nothing to compare")
    cvs = [c.cipher for c in comparisons]
    _check(pub, cvs)
    length = len(cvs[0])
    if any(len(cv) != length for cv in cvs):
        raise InvalidInput("all criteria must cover the same groups")
    kbits = rho_bits(pub, value_bound, max_rho_bits)
    n = len(comparisons)
    thresholds = [as_int_list(c.thresholds, length) for c in comparisons]
    signs = [_SIGN[c.op] for c in comparisons]
    r = _rng(rng)
    coef = [[[0] * length for _ in range(n)] for _ in range(n)]  # coef[i][j][g]
    plain = [[0] * length for _ in range(n)]
    for g in range(length):
        perm = random_permutation(n, r)
        for i, j in enumerate(perm):
            rho, rho2 = _draw_rho(r, kbits)
            c = signs[j] * rho
            coef[i][j][g] = c
            plain[i][g] = -c * thresholds[j][g] - rho2
    outputs = []
    for i in range(n):
        terms = [be.mul_plain(cvs[j], coef[i][j]) for j in range(n)]
        outputs.append(be.rerandomize(be.add_plain(be.sum(terms), plain[i])))
    return outputs
