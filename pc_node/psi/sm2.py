"""The SM2 curve (GB/T 32918.5) as a PSI group: the national-crypto option ``curve="sm2"``.

Elements travel as the 32-byte big-endian **x-coordinate** only. That is enough for
commutative re-encryption: ``P`` and ``−P`` share x, and ``x([k](±P)) = x([k]P)``, so
``x([a][b]P) = x([b][a]P)`` whichever square root a party picks. SM2's cofactor is 1, so the
only small-order element is the point at infinity, which has no x encoding and is rejected.

Hash to curve: try-and-increment — ``x = SM3(len(domain) || domain || len(id) || id || ctr)``
for ``ctr = 0, 1, …`` until ``x < p`` and ``x³ + ax + b`` is a square (two tries on average;
the number of tries depends only on the public identifier, not on any secret).

Backends:

* ``openssl-sm2`` — the system OpenSSL 3 ``libcrypto`` through ctypes (``EC_POINT_mul``
  with the constant-time ladder; a few thousand multiplications per second per core).
* ``ifma-sm2`` — Intel crypto_mb ``mbx_sm2_ecdh_mb8`` (8 lanes, AVX-512 IFMA CPUs only; it
  needs y, which we recover with a modular square root). Guarded by a self-test.

Scalars are 32 bytes big-endian in ``[1, n−1]``. The pure-Python :func:`reference_mul` is for
tests and self-tests only (slow, not constant time).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pc_common.errors import CryptoError, InvalidInput

from .curve import EcBackend, register_backend
from .hashing import sm3_hasher
from .randomness import Rng, system_rng

try:
    import gmpy2 as _gmpy2
except ImportError:  # pragma: no cover - gmpy2 is a project dependency
    _gmpy2 = None

__all__ = ["SM2_N", "SM2_P", "IfmaSm2", "OpenSslSm2", "hash_to_sm2", "reference_mul"]

SM2_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
SM2_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
SM2_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
SM2_GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
_P_HI = 0xFFFFFFFEFFFFFFFF  # first 8 bytes of p
NID_SM2 = 1172


def _rhs(x: int) -> int:
    return (x * x * x + SM2_A * x + SM2_B) % SM2_P


def _is_square(v: int) -> bool:
    if _gmpy2 is not None:
        return _gmpy2.legendre(v, SM2_P) >= 0
    return v == 0 or pow(v, (SM2_P - 1) // 2, SM2_P) == 1  # pragma: no cover


def _sqrt(v: int) -> int | None:
    """A square root mod p (p ≡ 3 mod 4), or None when ``v`` is not a square."""
    y = int(_gmpy2.powmod(v, (SM2_P + 1) // 4, SM2_P)) if _gmpy2 is not None else pow(v, (SM2_P + 1) // 4, SM2_P)
    return y if y * y % SM2_P == v % SM2_P else None


def hash_to_sm2(ids: Sequence[str], domain: bytes) -> np.ndarray:
    """x-coordinates (big-endian) of hashed points on SM2, ``(n, 32)`` uint8."""
    if not isinstance(domain, (bytes, bytearray)) or not 0 < len(domain) < 256:
        raise InvalidInput("hash domain must be 1 to 255 bytes")
    base = sm3_hasher(bytes([len(domain)]) + bytes(domain))
    out = bytearray()
    for ident in ids:
        raw = ident.encode("utf-8")
        h0 = base.copy()
        h0.update(len(raw).to_bytes(4, "big") + raw)
        for ctr in range(256):
            h = h0.copy()
            h.update(bytes([ctr]))
            d = h.digest()
            x = int.from_bytes(d, "big")
            if x < SM2_P and _is_square(_rhs(x)):
                out += d
                break
        else:  # pragma: no cover - probability 2^-256
            raise CryptoError("identifier could not be hashed to the curve")
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(len(ids), 32)


def validate_sm2_x(points: np.ndarray) -> None:
    hi = np.ascontiguousarray(points[:, :8]).view(">u8").ravel()
    if (hi > np.uint64(_P_HI)).any():
        raise CryptoError("point encoding is not reduced")
    for row in np.nonzero(hi == np.uint64(_P_HI))[0]:
        if int.from_bytes(points[row].tobytes(), "big") >= SM2_P:
            raise CryptoError("point encoding is not reduced")


def _random_scalar(rng: Rng | None) -> bytes:
    k = int.from_bytes((rng or system_rng)(40), "big") % (SM2_N - 1) + 1
    return k.to_bytes(32, "big")


def _check_scalar(scalar: bytes) -> bytes:
    if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != 32:
        raise CryptoError("secret scalar must be 32 bytes")
    if not 0 < int.from_bytes(scalar, "big") < SM2_N:
        raise CryptoError("SM2 scalar out of range")
    return bytes(scalar)


# --------------------------------------------------------------------------- reference
def _affine_add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % SM2_P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + SM2_A) * pow(2 * y1, -1, SM2_P) % SM2_P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, SM2_P) % SM2_P
    x3 = (lam * lam - x1 - x2) % SM2_P
    return x3, (lam * (x1 - x3) - y1) % SM2_P


def reference_mul(scalar: bytes, x_bytes: bytes) -> bytes:
    """x([k]P) for the point P with x-coordinate ``x_bytes`` (pure Python; tests only)."""
    x = int.from_bytes(x_bytes, "big")
    y = _sqrt(_rhs(x))
    if x >= SM2_P or y is None:
        raise CryptoError("point is not on the curve")
    k = int.from_bytes(scalar, "big")
    acc, add = None, (x, y)
    while k:
        if k & 1:
            acc = _affine_add(acc, add)
        add = _affine_add(add, add)
        k >>= 1
    if acc is None:
        raise CryptoError("result is the point at infinity")
    return acc[0].to_bytes(32, "big")


class _Sm2Base(EcBackend):
    curve: ClassVar[str] = "sm2"

    def random_scalar(self, rng: Rng | None = None) -> bytes:
        return _random_scalar(rng)

    def check_scalar(self, scalar: bytes) -> bytes:
        return _check_scalar(scalar)

    def validate_points(self, points: np.ndarray) -> None:
        validate_sm2_x(points)

    def hash_to_points(self, ids: Sequence[str], domain: bytes) -> np.ndarray:
        return hash_to_sm2(ids, domain)


# --------------------------------------------------------------------------- OpenSSL
@functools.lru_cache(maxsize=1)
def _libcrypto() -> tuple[ctypes.CDLL | None, str | None]:
    name = ctypes.util.find_library("crypto")
    if not name:
        return None, "the system OpenSSL libcrypto was not found"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None, "the system OpenSSL libcrypto could not be loaded"
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    try:
        lib.EC_GROUP_new_by_curve_name.restype = vp
        lib.EC_GROUP_new_by_curve_name.argtypes = [ctypes.c_int]
        lib.EC_GROUP_free.argtypes = [vp]
        lib.EC_POINT_new.restype = vp
        lib.EC_POINT_new.argtypes = [vp]
        lib.EC_POINT_free.argtypes = [vp]
        lib.EC_POINT_oct2point.restype = ctypes.c_int
        lib.EC_POINT_oct2point.argtypes = [vp, vp, vp, sz, vp]
        lib.EC_POINT_mul.restype = ctypes.c_int
        lib.EC_POINT_mul.argtypes = [vp, vp, vp, vp, vp, vp]
        lib.EC_POINT_point2oct.restype = sz
        lib.EC_POINT_point2oct.argtypes = [vp, vp, ctypes.c_int, vp, sz, vp]
        lib.BN_CTX_new.restype = vp
        lib.BN_CTX_free.argtypes = [vp]
        lib.BN_bin2bn.restype = vp
        lib.BN_bin2bn.argtypes = [vp, ctypes.c_int, vp]
        lib.BN_clear_free.argtypes = [vp]
        lib.ERR_clear_error.argtypes = []
    except AttributeError:
        return None, "the system libcrypto lacks the EC API"
    group = lib.EC_GROUP_new_by_curve_name(NID_SM2)
    if not group:
        return None, "the system OpenSSL was built without SM2"
    lib.EC_GROUP_free(group)
    return lib, None


@register_backend
class OpenSslSm2(_Sm2Base):
    """SM2 point multiplication through the system OpenSSL 3 (portable but slow)."""

    name: ClassVar[str] = "openssl-sm2"
    speed_rank: ClassVar[int] = 5

    @classmethod
    @functools.lru_cache(maxsize=1)
    def unavailable_reason(cls) -> str | None:
        lib, reason = _libcrypto()
        if lib is None:
            return reason
        try:
            probe = hash_to_sm2(["SELFTEST"], b"pc.psi.selftest")[0].tobytes()
            k = (12345).to_bytes(32, "big")
            got = cls().scalarmult_batch(k, probe)
        except Exception as exc:  # noqa: BLE001
            return f"self-test raised {type(exc).__name__}"
        if got != reference_mul(k, probe):
            return "self-test against the reference implementation failed"
        return None

    def __init__(self) -> None:
        self._lib = _libcrypto()[0]

    def _mul(self, scalars: np.ndarray, inp: np.ndarray, out: np.ndarray, lo: int, hi: int) -> bool:
        lib = self._lib
        n = hi - lo
        comp = np.empty((n, 33), dtype=np.uint8)
        comp[:, 0] = 2
        comp[:, 1:] = inp[lo:hi]
        res = np.zeros((n, 33), dtype=np.uint8)
        group = lib.EC_GROUP_new_by_curve_name(NID_SM2)
        ctx = lib.BN_CTX_new()
        p_in = lib.EC_POINT_new(group)
        p_out = lib.EC_POINT_new(group)
        bns: list[int] = []
        ok = True
        try:
            single = len(scalars) == 1
            kbase = scalars.ctypes.data
            if single:
                bns.append(lib.BN_bin2bn(kbase, 32, None))
            cbase, rbase = comp.ctypes.data, res.ctypes.data
            oct2point, mul, point2oct = lib.EC_POINT_oct2point, lib.EC_POINT_mul, lib.EC_POINT_point2oct
            for i in range(n):
                if single:
                    bn = bns[0]
                else:
                    bn = lib.BN_bin2bn(kbase + 32 * (lo + i), 32, None)
                    bns.append(bn)
                if (not oct2point(group, p_in, cbase + 33 * i, 33, ctx)
                        or not mul(group, p_out, None, p_in, bn, ctx)
                        or point2oct(group, p_out, 2, rbase + 33 * i, 33, ctx) != 33):
                    ok = False
                    lib.ERR_clear_error()  # don't let the thread's error queue grow
                    break
                if not single:
                    lib.BN_clear_free(bn)
                    bns.pop()
        finally:
            for bn in bns:
                lib.BN_clear_free(bn)
            lib.EC_POINT_free(p_in)
            lib.EC_POINT_free(p_out)
            lib.BN_CTX_free(ctx)
            lib.EC_GROUP_free(group)
        out[lo:hi] = res[:, 1:]
        return ok


# --------------------------------------------------------------------------- Intel IFMA
@register_backend
class IfmaSm2(_Sm2Base):
    """SM2 with Intel's ``mbx_sm2_ecdh_mb8`` (AVX-512 IFMA CPUs only)."""

    name: ClassVar[str] = "ifma-sm2"
    speed_rank: ClassVar[int] = 30
    lane_width: ClassVar[int] = 8

    @classmethod
    @functools.lru_cache(maxsize=1)
    def unavailable_reason(cls) -> str | None:
        from .ifma import crypto_mb_status

        reason = crypto_mb_status()
        if reason is not None:
            return reason
        try:
            pts = hash_to_sm2([f"SELFTEST{i}" for i in range(9)], b"pc.psi.selftest")
            k = _random_scalar(None)
            got = cls().scalarmult_batch(k, pts)
            for row, g in zip(pts, got):
                if g.tobytes() != reference_mul(k, row.tobytes()):
                    return "self-test against the reference implementation failed"
        except Exception as exc:  # noqa: BLE001
            return f"self-test raised {type(exc).__name__}"
        return None

    def __init__(self) -> None:
        from .ifma import load_crypto_mb

        lib = load_crypto_mb()
        if lib is None:  # pragma: no cover - guarded by unavailable_reason
            raise RuntimeError("libcrypto_mb is not loaded")
        self._fn = lib.mbx_sm2_ecdh_mb8

    def _mul(self, scalars: np.ndarray, inp: np.ndarray, out: np.ndarray, lo: int, hi: int) -> bool:
        from .ifma import lane_pointers, lanes_ok

        n = hi - lo
        # crypto_mb wants little-endian 64-bit limbs for x, y and the scalar; it writes the
        # shared x big-endian.
        x_le = np.ascontiguousarray(inp[lo:hi, ::-1])
        y_le = np.empty_like(x_le)
        for i in range(n):
            x = int.from_bytes(inp[lo + i].tobytes(), "big")
            y = _sqrt(_rhs(x))
            if y is None:
                return False  # not on the curve
            y_le[i] = np.frombuffer(y.to_bytes(32, "little"), dtype=np.uint8)
        k_le = np.ascontiguousarray(scalars[:, ::-1])
        pad_pt = np.zeros((2, 32), dtype=np.uint8)  # filler lanes: a valid point
        pad_pt[0] = x_le[0]
        pad_pt[1] = y_le[0]
        scratch = np.empty((8, 32), dtype=np.uint8)
        xp = lane_pointers(x_le.ctypes.data, n, pad_pt[0].ctypes.data)
        yp = lane_pointers(y_le.ctypes.data, n, pad_pt[1].ctypes.data)
        op = lane_pointers(out.ctypes.data + 32 * lo, n, scratch.ctypes.data)
        if len(k_le) == 1:
            kp = np.full(len(xp), k_le.ctypes.data, dtype=np.uint64)
        else:
            k_slice = np.ascontiguousarray(k_le[lo:hi])
            kp = lane_pointers(k_slice.ctypes.data, n, k_slice.ctypes.data)
        ok = True
        for g in range(len(xp) // 8):
            off = 64 * g
            st = self._fn(op.ctypes.data + off, kp.ctypes.data + off, xp.ctypes.data + off,
                          yp.ctypes.data + off, None, None)
            if st and not lanes_ok(st, min(8, n - 8 * g)):
                ok = False
        del scratch, pad_pt, x_le, y_le, k_le
        return ok
