"""SM2 signatures (GB/T 32918.2 §6.1, §7.1) on the system OpenSSL's SM2 curve (ctypes).

The expensive steps of an SM2 signature are point multiplications — k·G to sign, s·G + t·P to
verify — which the pure-Python ``gmssl`` does in 7–13 ms each here and OpenSSL's
``EC_POINT_mul`` in about 0.4 ms. The formulas around them are the standard's, a few lines each;
``pc_common.gm`` (digest ``e``, key and signature handling) calls :func:`sign` and
:func:`verify`, tested against ``gmssl`` and the standard's example. Where libcrypto or its SM2
group is missing, :func:`available` is False and ``gm`` keeps to ``gmssl``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

NID_SM2 = 1172
_UNCOMPRESSED = 4


@functools.lru_cache(maxsize=1)
def _lib():
    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        for fn, res, args in (
            ("EC_GROUP_new_by_curve_name", vp, [i]), ("EC_GROUP_free", None, [vp]),
            ("EC_POINT_new", vp, [vp]), ("EC_POINT_free", None, [vp]),
            ("EC_POINT_oct2point", i, [vp, vp, ctypes.c_char_p, sz, vp]),
            ("EC_POINT_point2oct", sz, [vp, vp, i, ctypes.c_char_p, sz, vp]),
            ("EC_POINT_mul", i, [vp, vp, vp, vp, vp, vp]),
            ("BN_CTX_new", vp, []), ("BN_CTX_free", None, [vp]),
            ("BN_bin2bn", vp, [ctypes.c_char_p, i, vp]), ("BN_clear_free", None, [vp]),
            ("ERR_clear_error", None, []),
        ):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        group = lib.EC_GROUP_new_by_curve_name(NID_SM2)
        if not group:
            return None
        lib.EC_GROUP_free(group)
        return lib
    except (OSError, AttributeError):
        return None


def available() -> bool:
    return _lib() is not None


def mul_add(g_scalar: int, point: bytes | None = None, p_scalar: int = 0) -> bytes | None:
    """``g_scalar``·G (+ ``p_scalar``·``point``, a 65-byte uncompressed point) as 65 bytes
    ``04 ‖ x ‖ y``; None for the point at infinity or a point not on the curve."""
    lib = _lib()
    group = lib.EC_GROUP_new_by_curve_name(NID_SM2)
    ctx = lib.BN_CTX_new()
    out_pt, in_pt, bns = lib.EC_POINT_new(group) if group else None, None, []
    try:
        g = lib.BN_bin2bn(g_scalar.to_bytes(32, "big"), 32, None)
        bns.append(g)
        if not (group and ctx and out_pt and g):
            raise MemoryError("OpenSSL could not allocate an SM2 computation")
        p = None
        if point is not None:
            in_pt = lib.EC_POINT_new(group)
            p = lib.BN_bin2bn(p_scalar.to_bytes(32, "big"), 32, None)
            bns.append(p)
            if not (in_pt and p):
                raise MemoryError("OpenSSL could not allocate an SM2 computation")
            if not lib.EC_POINT_oct2point(group, in_pt, bytes(point), len(point), ctx):
                return None
        if not lib.EC_POINT_mul(group, out_pt, g, in_pt, p, ctx):
            return None
        buf = ctypes.create_string_buffer(65)
        if lib.EC_POINT_point2oct(group, out_pt, _UNCOMPRESSED, buf, 65, ctx) != 65:
            return None                            # infinity encodes as one byte
        return buf.raw
    finally:
        lib.ERR_clear_error()                      # keep this thread's error queue empty
        for bn in bns:
            if bn:
                lib.BN_clear_free(bn)
        if in_pt:
            lib.EC_POINT_free(in_pt)
        if out_pt:
            lib.EC_POINT_free(out_pt)
        if ctx:
            lib.BN_CTX_free(ctx)
        if group:
            lib.EC_GROUP_free(group)


def sign(d: int, k: int, e: bytes, n: int) -> bytes | None:
    """r ‖ s for private key d, nonce k and digest e: r = (e + x1) mod n with (x1, y1) = k·G,
    s = (1 + d)⁻¹·(k − r·d) mod n; None when k is unusable (the caller draws another)."""
    x1 = int.from_bytes(mul_add(k)[1:33], "big")
    r = (int.from_bytes(e, "big") + x1) % n
    if r == 0 or r + k == n:
        return None
    s = pow(1 + d, -1, n) * (k - r * d) % n
    return None if s == 0 else r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_point: bytes, r: int, s: int, e: bytes, n: int) -> bool:
    """t = (r + s) mod n, (x1, y1) = s·G + t·P; valid iff (e + x1) mod n = r (with r, s in
    [1, n − 1] and t ≠ 0, checked here as by the caller)."""
    if not (1 <= r < n and 1 <= s < n) or (r + s) % n == 0:
        return False
    point = mul_add(s, public_point, (r + s) % n)
    return point is not None and (int.from_bytes(e, "big") + int.from_bytes(point[1:33], "big")) % n == r
