"""X25519 group for PSI: hash-to-curve, the libsodium backend, and OPRF blinding scalars.

Hash to curve
    ``H(id) = Elligator2( SM3(len(domain) || domain || utf8(id)) mod p )`` — the RFC 9380
    ``map_to_curve_elligator2`` for Curve25519, u-coordinate only (one Legendre symbol via
    gmpy2 and one batched inversion per identifier: ~100k identifiers/s in Python).

    Why not just take the digest as a u-coordinate? X25519 accepts any u and the protocol would
    still be commutative (curve and twist are both abelian groups, and the clamped scalar is a
    multiple of 8, killing small-order components). But about half of all u lie on the *twist*,
    and whether ``H(x)^a`` lies on the twist is visible to anyone holding it (a Legendre symbol)
    and equal to that bit of ``H(x)`` — a one-bit fingerprint of each hidden identifier. The
    Elligator map puts every hashed point on the curve, which removes that leak and lets the
    OPRF invert its blinding (inversion modulo ℓ only works in the curve's prime-order group).

Scalars
    X25519 clamps every scalar ``k`` to ``k' = 2^254 + 8·m``. Clamping is a fixed function, so
    ``X25519(a, X25519(b, u)) = X25519(b, X25519(a, u))``: exactly the commutativity ECDH-PSI
    needs, and the factor 8 removes any small-order component of a hashed point. For the OPRF
    (unbalanced lookup) the requester must *undo* its blinding scalar ``r``:
    :func:`blinding_pair` draws a clamped ``r`` whose inverse modulo the group order ``ℓ`` is
    itself a clamped value (true for about half of all ``r``; we re-draw otherwise), so that
    ``X25519(s, X25519(b, X25519(r, H(x)))) = X25519(b, H(x))``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pc_common.errors import CryptoError, InvalidInput

try:
    import gmpy2 as _gmpy2
except ImportError:  # pragma: no cover - gmpy2 is a project dependency
    _gmpy2 = None

from .curve import EcBackend, register_backend
from .encoding import POINT_LEN
from .hashing import sm3_hasher
from .randomness import Rng, system_rng

__all__ = [
    "L25519",
    "P25519",
    "SodiumX25519",
    "blinding_pair",
    "clamp",
    "elligator2_u",
    "hash_to_x25519",
    "sm3_digests",
    "validate_u",
]

P25519 = 2**255 - 19
#: order of the prime-order subgroup of Curve25519
L25519 = 2**252 + 27742317777372353535851937790883648493
_A25519 = 486662
_INV8 = pow(8, -1, L25519)
_MASK255 = (1 << 255) - 1


def _domain_prefix(domain: bytes) -> bytes:
    if not isinstance(domain, (bytes, bytearray)) or not 0 < len(domain) < 256:
        raise InvalidInput("hash domain must be 1 to 255 bytes")
    return bytes([len(domain)]) + bytes(domain)


def sm3_digests(ids: Sequence[str], domain: bytes) -> bytes:
    """Concatenated SM3(len(domain) || domain || utf8(id)) digests, 32 bytes each."""
    base = sm3_hasher(_domain_prefix(domain))
    parts = []
    for i in ids:
        h = base.copy()
        h.update(i.encode("utf-8"))
        parts.append(h.digest())
    return b"".join(parts)


def _legendre_is_square(v: int) -> bool:
    if _gmpy2 is not None:
        return _gmpy2.legendre(v, P25519) >= 0
    return pow(v, (P25519 - 1) // 2, P25519) != P25519 - 1  # pragma: no cover - ~50x slower


def elligator2_u(field_elements: Sequence[int]) -> np.ndarray:
    """RFC 9380 ``map_to_curve_elligator2`` for Curve25519 (Z = 2), u-coordinate only.

    ``x1 = −A / (1 + 2t²)``; ``u = x1`` if ``x1³ + A·x1² + x1`` is a square, else ``−x1 − A``.
    ``1 + 2t²`` is never 0 because −1/2 is not a square mod p. The inversions are batched.
    """
    n = len(field_elements)
    p, a = P25519, _A25519
    dens = [(1 + 2 * t * t) % p for t in field_elements]
    prefix = [0] * n
    acc = 1
    for i, d in enumerate(dens):
        prefix[i] = acc
        acc = acc * d % p
    inv = pow(acc, -1, p) if n else 1
    us = [0] * n
    for i in range(n - 1, -1, -1):
        x1 = (-a * (inv * prefix[i] % p)) % p
        inv = inv * dens[i] % p
        gx1 = (x1 * (x1 * (x1 + a) + 1)) % p
        us[i] = x1 if _legendre_is_square(gx1) else (-x1 - a) % p
    out = np.frombuffer(b"".join(u.to_bytes(32, "little") for u in us), dtype=np.uint8)
    return out.reshape(n, POINT_LEN)


def hash_to_x25519(ids: Sequence[str], domain: bytes) -> np.ndarray:
    """Hash normalised identifiers to u-coordinates of points on Curve25519 (never the twist).

    ``t = SM3(len(domain) || domain || utf8(id)) mod p`` (little-endian), then Elligator 2.
    The point may carry a small-order component; every protocol step multiplies by a clamped
    scalar (a multiple of 8), which removes it, so all values that leave a party lie in the
    prime-order subgroup.
    """
    raw = sm3_digests(ids, domain)
    p = P25519
    ts = [int.from_bytes(raw[i:i + 32], "little") % p for i in range(0, len(raw), 32)]
    return elligator2_u(ts)


def _sodium():
    from nacl._sodium import ffi, lib

    return ffi, lib


# The reduced u-coordinates of the small-order points (libsodium's blocklist, canonical part):
# 0, 1, p - 1 and the two of order 8. Rejected by value, not by the output of the
# multiplication: Intel's multi-buffer code maps u = p - 1 to a non-zero result.
_SMALL_ORDER_U = np.array([
    bytes(32), (1).to_bytes(32, "little"), ((1 << 255) - 20).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
], dtype="S32")


def validate_u(points: np.ndarray) -> None:
    """Reject u-coordinates with the (ignored) top bit set, not reduced modulo p, or of small order."""
    if (points[:, 31] & 0x80).any():
        raise CryptoError("point encoding has its top bit set")
    # u >= p = 2^255 - 19 only when bytes 1..30 are 0xff, byte 31 is 0x7f and byte 0 >= 0xed
    high = (points[:, 31] == 0x7F) & (points[:, 1:31] == 0xFF).all(axis=1)
    if high.any() and (points[high, 0] >= 0xED).any():
        raise CryptoError("point encoding is not reduced")
    if np.isin(np.ascontiguousarray(points).view("S32").ravel(), _SMALL_ORDER_U).any():
        raise CryptoError("a received point is of small order")


def clamp(k: bytes) -> int:
    """The integer X25519 actually multiplies by for the 32-byte scalar ``k``."""
    v = int.from_bytes(k, "little")
    v &= ~7
    v &= _MASK255
    v |= 1 << 254
    return v


def blinding_pair(rng: Rng | None = None) -> tuple[bytes, bytes]:
    """``(r, s)``: 32-byte X25519 scalars with ``clamp(s)·clamp(r) ≡ 1 (mod ℓ)``.

    Multiplying a prime-order point by ``r`` and later by ``s`` gives the point back, which is
    what unblinding in the OPRF needs. About two draws are needed on average.
    """
    rng = rng or system_rng
    for _ in range(256):
        r = clamp(rng(32))
        r_inv = int(_gmpy2.invert(r, L25519)) if _gmpy2 is not None else pow(r, -1, L25519)
        t = r_inv * _INV8 % L25519
        if (1 << 251) <= t < (1 << 252):
            s = 8 * t  # already clamped: bits 0-2 clear, bit 254 set, bit 255 clear
            return r.to_bytes(32, "little"), s.to_bytes(32, "little")
    raise CryptoError("random source failed to produce a blinding scalar")  # pragma: no cover


@register_backend
class SodiumX25519(EcBackend):
    """X25519 through libsodium (PyNaCl's cffi module, calls release the GIL)."""

    name: ClassVar[str] = "libsodium"
    curve: ClassVar[str] = "x25519"
    speed_rank: ClassVar[int] = 10

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _sodium()
        except ImportError:  # pragma: no cover - PyNaCl is a dependency
            return "PyNaCl is not installed"
        return None

    def __init__(self) -> None:
        self._ffi, self._lib = _sodium()

    def random_scalar(self, rng: Rng | None = None) -> bytes:
        return (rng or system_rng)(32)

    def validate_points(self, points: np.ndarray) -> None:
        validate_u(points)

    def hash_to_points(self, ids: Sequence[str], domain: bytes) -> np.ndarray:
        return hash_to_x25519(ids, domain)

    def _mul(self, scalars: np.ndarray, inp: np.ndarray, out: np.ndarray, lo: int, hi: int) -> bool:
        ffi = self._ffi
        mul = self._lib.crypto_scalarmult
        src = ffi.from_buffer(inp)
        dst = ffi.from_buffer(out, require_writable=True)
        keys = ffi.from_buffer(scalars)
        bad = 0
        if len(scalars) == 1:
            for i in range(lo, hi):
                bad |= mul(dst + 32 * i, keys, src + 32 * i)
        else:
            for i in range(lo, hi):
                off = 32 * i
                bad |= mul(dst + off, keys + off, src + off)
        return bad == 0
