"""Key holder side: decrypt blinded results and turn them into verdict bits.

Backends already return signed values centred in (-m/2, m/2]; ``centre`` is here
for raw residues from elsewhere. Blinded values are read only for the property
they were built to carry (zero / positive) — their magnitude is noise by design
and must not be stored or shown.
"""
from __future__ import annotations

import numpy as np

from pc_common.errors import OverflowDetected

from .backend import CipherVector, SecretContext, backend_for


def centre(values: np.ndarray | list[int], modulus: int) -> np.ndarray:
    """Residues mod ``modulus`` mapped to the signed range (-m/2, m/2]."""
    half = modulus // 2
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        v = int(v) % modulus
        out[i] = v - modulus if v > half else v
    return out


def is_zero(values: np.ndarray | list[int]) -> np.ndarray:
    return np.fromiter((int(v) == 0 for v in values), dtype=bool, count=len(values))


def is_positive(values: np.ndarray | list[int]) -> np.ndarray:
    return np.fromiter((int(v) > 0 for v in values), dtype=bool, count=len(values))


def check_sums(values: np.ndarray, bound: int) -> np.ndarray:
    """OverflowDetected if a decrypted sum lies outside the bound it was proven to obey."""
    if any(abs(int(v)) > bound for v in values):
        raise OverflowDetected("a decrypted sum is outside its declared bound")
    return values


def decrypt(secret: SecretContext, cv: CipherVector) -> np.ndarray:
    return backend_for(secret).decrypt(secret, cv)


def decrypt_sums(secret: SecretContext, cv: CipherVector, bound: int) -> np.ndarray:
    """Plain (unblinded) sums, checked against their bound."""
    return check_sums(decrypt(secret, cv), bound)


def decrypt_zero_tests(secret: SecretContext, cv: CipherVector) -> np.ndarray:
    """True where the tested sum (or every folded sum) is zero."""
    return is_zero(decrypt(secret, cv))


def decrypt_comparisons(secret: SecretContext, cv: CipherVector) -> np.ndarray:
    """True where the blinded comparison holds (S < T for less_than, S > T for greater_than)."""
    return is_positive(decrypt(secret, cv))
