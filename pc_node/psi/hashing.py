"""SM3 with a reusable prefix state (hashlib's OpenSSL SM3 when built in, else ``cryptography``)."""
from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes

__all__ = ["sm3_hasher"]


class _CryptographySm3:
    """hashlib-like wrapper (update / copy / digest) over ``cryptography``'s SM3."""

    __slots__ = ("_h",)

    def __init__(self, h: hashes.Hash) -> None:
        self._h = h

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def copy(self) -> _CryptographySm3:
        return _CryptographySm3(self._h.copy())

    def digest(self) -> bytes:
        return self._h.copy().finalize()


def _hashlib_has_sm3() -> bool:
    try:
        hashlib.new("sm3")
    except ValueError:  # pragma: no cover - depends on the system OpenSSL build
        return False
    return True


_HASHLIB_SM3 = _hashlib_has_sm3()


def sm3_hasher(prefix: bytes = b""):
    """A fresh SM3 state that has absorbed ``prefix``; ``.copy()`` it per message."""
    if _HASHLIB_SM3:
        return hashlib.new("sm3", prefix)
    h = _CryptographySm3(hashes.Hash(hashes.SM3()))  # pragma: no cover
    h.update(prefix)  # pragma: no cover
    return h  # pragma: no cover
