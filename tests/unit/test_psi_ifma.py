"""Intel crypto_mb plumbing: loader, CPU check, and the 8-lane pointer code.

The real ``mbx_*_mb8`` functions need AVX-512 IFMA. So that the lane/padding/status logic is
exercised on any CPU, these tests also swap in a ctypes *emulator* of the C function (built on
libsodium / the SM2 reference) with the documented calling convention; where the CPU supports
IFMA the real-library agreement tests in ``test_psi_curve.py`` run as well.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from nacl.bindings import crypto_scalarmult
from nacl.exceptions import RuntimeError as NaclRuntimeError

from pc_common.errors import CryptoError
from pc_node.psi import get_backend
from pc_node.psi.ifma import (
    IfmaX25519,
    crypto_mb_status,
    lane_pointers,
    lanes_ok,
    load_crypto_mb,
)
from pc_node.psi.sm2 import IfmaSm2, reference_mul
from pc_node.psi.x25519 import hash_to_x25519

DOMAIN = b"pc.psi.test"
_MB8 = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
_SM2_MB8 = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _ptrs(addr: int) -> list[int]:
    return list((ctypes.c_void_p * 8).from_address(addr))


@_MB8
def _fake_x25519_mb8(out_pp, key_pp, in_pp):
    status = 0
    for lane, (o, k, p) in enumerate(zip(_ptrs(out_pp), _ptrs(key_pp), _ptrs(in_pp))):
        try:
            r = crypto_scalarmult(ctypes.string_at(k, 32), ctypes.string_at(p, 32))
        except NaclRuntimeError:
            r = bytes(32)
            status |= 4 << (4 * lane)  # MBX_STATUS_LOW_ORDER_ERR
        ctypes.memmove(o, r, 32)
    return status


@_SM2_MB8
def _fake_sm2_ecdh_mb8(out_pp, key_pp, x_pp, y_pp, z_pp, buf):
    assert z_pp is None and buf is None
    for o, k, x in zip(_ptrs(out_pp), _ptrs(key_pp), _ptrs(x_pp)):
        k_be = ctypes.string_at(k, 32)[::-1]   # little-endian limbs in
        x_be = ctypes.string_at(x, 32)[::-1]
        ctypes.memmove(o, reference_mul(k_be, x_be), 32)  # big-endian x out
    return 0


def test_loader_and_cpu_check_report_cleanly():
    lib = load_crypto_mb()
    reason = crypto_mb_status()
    if lib is None:
        assert "libcrypto_mb" in reason
    elif reason is not None:
        assert "IFMA" in reason
    else:
        assert IfmaX25519.unavailable_reason() is None


def test_lane_pointers_pad_to_eight():
    p = lane_pointers(1000, 10, pad_addr=7)
    assert len(p) == 16
    assert p[:10].tolist() == [1000 + 32 * i for i in range(10)]
    assert p[10:].tolist() == [7] * 6
    assert lanes_ok(0x40000000, 7) and not lanes_ok(0x40000000, 8)


def _emulated_x25519() -> IfmaX25519:
    be = object.__new__(IfmaX25519)
    be._fn = _fake_x25519_mb8
    return be


@pytest.mark.parametrize("n", [1, 7, 8, 9, 200, 333])
def test_x25519_lane_plumbing_matches_libsodium(n):
    be = _emulated_x25519()
    ref = get_backend("libsodium")
    pts = hash_to_x25519([f"ID{i}" for i in range(n)], DOMAIN)
    key = bytes(range(32))
    assert np.array_equal(be.scalarmult_batch(key, pts), ref.scalarmult_batch(key, pts))
    keys = np.frombuffer(bytes(range(256)) * (n // 8 + 1), np.uint8)[:32 * n].reshape(n, 32)
    assert np.array_equal(be.scalarmult_each(keys, pts), ref.scalarmult_each(keys, pts))


def test_x25519_lane_status_maps_to_crypto_error():
    be = _emulated_x25519()
    pts = hash_to_x25519([f"ID{i}" for i in range(12)], DOMAIN).copy()
    pts[9] = 0  # u = 0 in the second group of lanes
    with pytest.raises(CryptoError, match="small order"):
        be.scalarmult_batch(bytes(range(32)), pts)


def test_sm2_lane_plumbing_matches_reference():
    be = object.__new__(IfmaSm2)
    be._fn = _fake_sm2_ecdh_mb8
    k = be.random_scalar()
    pts = be.hash_to_points([f"ID{i}" for i in range(10)], DOMAIN)
    got = be.scalarmult_batch(k, pts)
    for p, g in zip(pts, got):
        assert g.tobytes() == reference_mul(k, p.tobytes())


@_MB8
def _wrong_x25519_mb8(out_pp, key_pp, in_pp):
    for o, p in zip(_ptrs(out_pp), _ptrs(in_pp)):
        ctypes.memmove(o, ctypes.string_at(p, 32), 32)  # "multiplies" by 1
    return 0


def test_self_test_rejects_a_library_that_disagrees_with_libsodium():
    be = object.__new__(IfmaX25519)
    be._fn = _wrong_x25519_mb8
    assert "self-test against libsodium failed" in be._self_test()
