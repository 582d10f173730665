"""Randomness seam for the PSI cores.

Every protocol step that draws randomness takes ``rng``: a callable ``rng(n) -> n bytes``.
Production code leaves it out and gets :func:`secrets.token_bytes`; tests pass
:func:`deterministic_rng` so that runs are reproducible. Shuffles use a permutation derived
from that byte stream (argsort of random 64-bit keys), so they are as unpredictable as the
stream itself; no non-cryptographic PRNG is involved.
"""
from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

import numpy as np

__all__ = ["Rng", "deterministic_rng", "random_permutation", "system_rng"]

Rng = Callable[[int], bytes]


def system_rng(n: int) -> bytes:
    return secrets.token_bytes(n)


def deterministic_rng(seed: bytes | str | int) -> Rng:
    """A reproducible byte stream (SHAKE-256 in counter mode). For tests only."""
    if isinstance(seed, int):
        seed = seed.to_bytes(16, "big", signed=True)
    elif isinstance(seed, str):
        seed = seed.encode()
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(n) if n else b""

    return rng


def random_permutation(n: int, rng: Rng | None = None) -> np.ndarray:
    """Uniform-looking permutation of ``range(n)`` (int64), driven by ``rng``.

    Ties between two 64-bit keys (probability < n²/2⁶⁵) are broken by position, which biases
    the permutation by at most that probability.
    """
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    keys = np.frombuffer((rng or system_rng)(8 * n), dtype=np.uint64)
    return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
