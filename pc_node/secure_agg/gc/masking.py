"""Masks the coordinator adds under encryption, and the circuit inputs both sides derive.

Integer mode (Paillier; statistical masking as in DGK/Veugen comparison):
C wants pass = [x < T] for 0 ≤ x < 2^l, 0 ≤ T ≤ 2^l. With z = x − T + 2^l ∈ [0, 2^(l+1))
and r uniform in [0, 2^(l+κ)), κ = :data:`STAT_BITS` = 40, R decrypts d = z + r, which
is within statistical distance 2^(1−κ) of uniform whatever x is. With
α = d mod 2^l, D0 = bit l of d (R) and β = r mod 2^l, R0 = bit l of r (C):
z_l = D0 ⊕ R0 ⊕ [α < β] (the carry into bit l is [α < β]) and pass = ¬z_l.
C adds the plaintext offset 2^l − T + r to [x]: :func:`integer_mask`.

Modular mode (BFV, plaintext modulus t): R decrypts d = (x + r) mod t with r uniform
mod t, a one-time pad over Z_t. C holds a = r, b = (r + T) mod t and w = [a > b]
(the window [r, r + T) wraps around t); then x < T ⇔ d ∈ [a, b) (no wrap) or
d ∈ [a, t) ∪ [0, b) (wrap): pass = (A ∧ B) ⊕ (w ∧ (A ⊕ B)) with A = [a ≤ d],
B = [d < b]. C adds r to [x]: :func:`modular_mask`. Needs 0 ≤ x < t, 0 ≤ T < t.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pc_common.errors import InvalidInput

from .primitives import U64, Rng, default_rng, draw

STAT_BITS = 40
MAX_BITS = 62


@dataclass(frozen=True, eq=False)
class IntegerGarblerInput:
    """C's private inputs for one integer-mode criterion: β = r mod 2^l, R0 = bit l of r."""

    beta: np.ndarray
    r_bit: np.ndarray


@dataclass(frozen=True, eq=False)
class IntegerEvaluatorInput:
    """R's inputs for one integer-mode criterion: α = d mod 2^l, D0 = bit l of d."""

    alpha: np.ndarray
    d_bit: np.ndarray


@dataclass(frozen=True, eq=False)
class ModularGarblerInput:
    """C's private inputs for one modular criterion: a = r, b = (r + T) mod t, wrap = [a > b]."""

    a: np.ndarray
    b: np.ndarray
    wrap: np.ndarray


@dataclass(frozen=True, eq=False)
class ModularEvaluatorInput:
    """R's input for one modular criterion: d = (x + r) mod t."""

    d: np.ndarray


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise InvalidInput(f"comparison width must be 1..{MAX_BITS} bits")
    return bits


def _ints(values: Sequence[int], what: str) -> list[int]:
    out = [int(v) for v in values]
    if any(isinstance(v, bool) for v in values):
        raise InvalidInput(f"{what} must be integers")
    return out


def integer_garbler_input(bits: int, masks: Sequence[int]) -> IntegerGarblerInput:
    """C's circuit inputs from its masks r (each in [0, 2^(bits+STAT_BITS)))."""
    bits = _check_bits(bits)
    rs = _ints(masks, "masks")
    if any(not 0 <= r < 1 << (bits + STAT_BITS) for r in rs):
        raise InvalidInput("integer mask out of range")
    low = (1 << bits) - 1
    beta = np.fromiter((r & low for r in rs), dtype=U64, count=len(rs))
    r_bit = np.fromiter(((r >> bits) & 1 for r in rs), dtype=np.bool_, count=len(rs))
    return IntegerGarblerInput(beta, r_bit)


def integer_mask(bits: int, threshold: int, count: int, rng: Rng | None = None) -> tuple[list[int], IntegerGarblerInput]:
    """Draw ``count`` masks for the test x < threshold on l = ``bits``-bit values.

    Returns the plaintext offsets 2^l − T + r_g to add to each [x_g], and C's inputs.
    """
    bits = _check_bits(bits)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= 1 << bits:
        raise InvalidInput("integer threshold must be in [0, 2^bits]")
    if count < 1:
        raise InvalidInput("mask count must be positive")
    width = bits + STAT_BITS
    nbytes = -(-width // 8)
    raw = draw(default_rng(rng), nbytes * count)
    top = (1 << width) - 1
    rs = [int.from_bytes(raw[i * nbytes:(i + 1) * nbytes], "little") & top for i in range(count)]
    base = (1 << bits) - threshold
    return [base + r for r in rs], integer_garbler_input(bits, rs)


def integer_inputs(masked: Sequence[int], bits: int) -> IntegerEvaluatorInput:
    """R's circuit inputs from its decryptions d = x − T + 2^l + r."""
    bits = _check_bits(bits)
    ds = _ints(masked, "masked values")
    if any(not 0 <= d < 1 << (bits + STAT_BITS + 1) for d in ds):
        raise InvalidInput("masked value out of range for this comparison")
    low = (1 << bits) - 1
    alpha = np.fromiter((d & low for d in ds), dtype=U64, count=len(ds))
    d_bit = np.fromiter(((d >> bits) & 1 for d in ds), dtype=np.bool_, count=len(ds))
    return IntegerEvaluatorInput(alpha, d_bit)


def _check_modulus(t: int) -> int:
    if isinstance(t, bool) or not isinstance(t, int) or not 2 <= t < 1 << MAX_BITS:
        raise InvalidInput(f"plaintext modulus must be in [2, 2^{MAX_BITS})")
    return t


def _residues(values, t: int, what: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise InvalidInput(f"{what} must be a non-empty 1-D integer array")
    if (a < 0).any() or (a.astype(U64) >= np.uint64(t)).any():
        raise InvalidInput(f"{what} must lie in [0, t)")
    return a.astype(U64)


def modular_garbler_input(t: int, threshold: int, masks) -> ModularGarblerInput:
    """C's circuit inputs for x < threshold from its masks r ∈ [0, t)."""
    t = _check_modulus(t)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < t:
        raise InvalidInput("modular threshold must be in [0, t)")
    a = _residues(masks, t, "masks")
    # r + T < 2^63 since t < 2^62, so this cannot overflow uint64
    s = a + np.uint64(threshold)
    b = np.where(s >= np.uint64(t), s - np.uint64(t), s)
    return ModularGarblerInput(a, b, a > b)


def modular_mask(t: int, threshold: int, count: int, rng: Rng | None = None) -> tuple[np.ndarray, ModularGarblerInput]:
    """Draw ``count`` uniform masks r mod t (rejection sampling); returns (r, C's inputs).

    C adds r_g to [x_g]; R decrypts d_g = (x_g + r_g) mod t.
    """
    t = _check_modulus(t)
    if count < 1:
        raise InvalidInput("mask count must be positive")
    src = default_rng(rng)
    top = np.uint64((1 << t.bit_length()) - 1)
    r = np.empty(count, dtype=U64)
    todo = np.arange(count)
    while todo.size:
        cand = np.frombuffer(draw(src, 8 * todo.size), dtype=U64) & top
        ok = cand < np.uint64(t)
        r[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return r, modular_garbler_input(t, threshold, r)


def modular_inputs(masked, t: int) -> ModularEvaluatorInput:
    """R's circuit input from its decryptions of x + r: residues in [0, t), or the centred
    representatives in (−t, t) that BFV decryption returns (negative ones are taken mod t)."""
    t = _check_modulus(t)
    a = np.asarray(masked)
    if a.ndim == 1 and a.size and np.issubdtype(a.dtype, np.signedinteger):
        if (a < -t).any():
            raise InvalidInput("masked values must lie in (-t, t)")
        a = np.where(a < 0, a + t, a)
    return ModularEvaluatorInput(_residues(a, t, "masked values"))
