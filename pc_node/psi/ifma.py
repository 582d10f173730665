"""Intel crypto_mb multi-buffer backends (AVX-512 IFMA): ``mbx_x25519_mb8``, ``mbx_sm2_ecdh_mb8``.

The library comes from the PyPI wheels ``ipp-crypto`` (``libcrypto_mb.so``, installed under
``<prefix>/lib``) and ``intel-cmplr-lib-rt`` (``libimf``, ``libintlc``, ``libsvml``,
``libirng``, which must be loaded first with ``RTLD_GLOBAL``). ``PC_CRYPTO_MB_LIB`` may point
at a ``libcrypto_mb.so`` elsewhere.

A backend is used only when the library says the CPU can run it
(``mbx_is_crypto_mb_applicable``) *and* a self-test against the reference implementation
(libsodium for X25519, OpenSSL or pure Python for SM2) passes; otherwise
:meth:`unavailable_reason` explains why and :func:`~pc_node.psi.curve.best_backend` falls back.
On CPUs without AVX-512 IFMA the library answers every lane with
``MBX_STATUS_UNSUPPORTED_ISA_ERR`` (0xA) rather than faulting, but we never get that far.

Calls work on 8 lanes at a time; the 8-pointer arrays for a whole slice are built at once
with numpy address arithmetic (``base + 32·i``), so the per-point Python cost is one eighth of
a ctypes call. ctypes releases the GIL during the call, so the shared thread pool scales.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import site
import sys
import threading
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from .curve import EcBackend, register_backend
from .randomness import Rng, system_rng
from .x25519 import hash_to_x25519, validate_u

__all__ = ["IfmaX25519", "crypto_mb_status", "load_crypto_mb"]

ENV_LIB = "PC_CRYPTO_MB_LIB"
_RUNTIME_LIBS = ("libintlc.so.5", "libintlc.so", "libimf.so", "libsvml.so", "libirng.so")
_keep_alive: list[ctypes.CDLL] = []
_load_lock = threading.Lock()


def _candidate_dirs() -> list[str]:
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")]
    try:
        for sp in site.getsitepackages() + [site.getusersitepackages()]:
            dirs.append(os.path.normpath(os.path.join(sp, "..", "..")))  # <prefix>/lib
            dirs.append(sp)
    except AttributeError:  # pragma: no cover - unusual interpreters
        pass
    seen: dict[str, None] = {}
    for d in dirs:
        if os.path.isdir(d):
            seen.setdefault(os.path.realpath(d), None)
    return list(seen)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    path = os.environ.get(ENV_LIB, "").strip()
    candidates = [path] if path else []
    for d in _candidate_dirs():
        candidates += sorted(glob.glob(os.path.join(d, "libcrypto_mb.so*")), key=len)
    found = ctypes.util.find_library("crypto_mb")
    if found:
        candidates.append(found)
    if not candidates:
        return None, "libcrypto_mb.so not found (install the ipp-crypto wheel)"
    errors = []
    for cand in candidates:
        libdir = os.path.dirname(cand)
        for rt in _RUNTIME_LIBS:  # Intel compiler runtime, needed by libcrypto_mb's symbols
            for d in ([libdir] if libdir else []) + _candidate_dirs():
                rp = os.path.join(d, rt)
                if os.path.exists(rp):
                    try:
                        _keep_alive.append(ctypes.CDLL(rp, mode=ctypes.RTLD_GLOBAL))
                    except OSError:
                        pass
                    break
        try:
            lib = ctypes.CDLL(cand)
        except OSError as exc:
            errors.append(str(exc).split(":")[-1].strip())
            continue
        _declare(lib)
        return lib, None
    return None, "libcrypto_mb.so could not be loaded (" + "; ".join(errors[:2]) + ")"


def _declare(lib: ctypes.CDLL) -> None:
    vp = ctypes.c_void_p
    lib.mbx_get_cpu_features.restype = ctypes.c_uint64
    lib.mbx_get_cpu_features.argtypes = []
    lib.mbx_is_crypto_mb_applicable.restype = ctypes.c_int
    lib.mbx_is_crypto_mb_applicable.argtypes = [ctypes.c_uint64]
    lib.mbx_x25519_mb8.restype = ctypes.c_uint32
    lib.mbx_x25519_mb8.argtypes = [vp, vp, vp]
    lib.mbx_sm2_ecdh_mb8.restype = ctypes.c_uint32
    lib.mbx_sm2_ecdh_mb8.argtypes = [vp, vp, vp, vp, vp, vp]


def load_crypto_mb() -> ctypes.CDLL | None:
    with _load_lock:
        return _load()[0]


@functools.lru_cache(maxsize=1)
def crypto_mb_status() -> str | None:
    """``None`` when crypto_mb loads and the CPU can run it, else the reason."""
    with _load_lock:
        lib, reason = _load()
    if lib is None:
        return reason
    features = int(lib.mbx_get_cpu_features())
    if not lib.mbx_is_crypto_mb_applicable(features):
        return ("this CPU lacks AVX-512 IFMA (mbx_is_crypto_mb_applicable says no; "
                f"features 0x{features:x})")
    return None


def lane_pointers(base: int, n: int, pad_addr: int, stride: int = 32) -> np.ndarray:
    """``[base, base+stride, …]`` for ``n`` items, padded with ``pad_addr`` to a multiple of 8."""
    groups = -(-n // 8)
    ptrs = np.full(groups * 8, pad_addr, dtype=np.uint64)
    ptrs[:n] = np.uint64(base) + np.arange(n, dtype=np.uint64) * np.uint64(stride)
    return ptrs


def lanes_ok(status: int, lanes: int) -> bool:
    mask = (1 << (4 * lanes)) - 1
    return status & mask == 0


# The u-coordinate 9 (the X25519 base point): a harmless filler for unused lanes.
_PAD_POINT = np.zeros((1, 32), dtype=np.uint8)
_PAD_POINT[0, 0] = 9
_PAD_KEY = np.full((1, 32), 0x42, dtype=np.uint8)


@register_backend
class IfmaX25519(EcBackend):
    """X25519 with Intel's 8-lane AVX-512 IFMA code (about 4× libsodium per core)."""

    name: ClassVar[str] = "ifma"
    curve: ClassVar[str] = "x25519"
    speed_rank: ClassVar[int] = 40
    lane_width: ClassVar[int] = 8

    @classmethod
    @functools.lru_cache(maxsize=1)
    def unavailable_reason(cls) -> str | None:
        reason = crypto_mb_status()
        if reason is not None:
            return reason
        try:
            return cls()._self_test()
        except Exception as exc:  # noqa: BLE001 - any failure means "don't use it"
            return f"self-test raised {type(exc).__name__}"

    def __init__(self) -> None:
        lib = load_crypto_mb()
        if lib is None:  # pragma: no cover - guarded by unavailable_reason
            raise RuntimeError("libcrypto_mb is not loaded")
        self._fn = lib.mbx_x25519_mb8

    def _self_test(self) -> str | None:
        from .x25519 import SodiumX25519

        ref = SodiumX25519()
        rng = system_rng
        pts = hash_to_x25519([f"SELFTEST{i}" for i in range(19)], b"pc.psi.selftest")
        key = ref.random_scalar(rng)
        if not np.array_equal(self.scalarmult_batch(key, pts), ref.scalarmult_batch(key, pts)):
            return "self-test against libsodium failed (one scalar)"
        keys = np.frombuffer(rng(32 * len(pts)), dtype=np.uint8).reshape(-1, 32)
        if not np.array_equal(self.scalarmult_each(keys, pts), ref.scalarmult_each(keys, pts)):
            return "self-test against libsodium failed (one scalar per point)"
        return None

    def random_scalar(self, rng: Rng | None = None) -> bytes:
        return (rng or system_rng)(32)

    def validate_points(self, points: np.ndarray) -> None:
        validate_u(points)

    def hash_to_points(self, ids: Sequence[str], domain: bytes) -> np.ndarray:
        return hash_to_x25519(ids, domain)

    def _mul(self, scalars: np.ndarray, inp: np.ndarray, out: np.ndarray, lo: int, hi: int) -> bool:
        n = hi - lo
        scratch = np.empty((8, 32), dtype=np.uint8)  # output of the filler lanes
        in_p = lane_pointers(inp.ctypes.data + 32 * lo, n, _PAD_POINT.ctypes.data)
        out_p = lane_pointers(out.ctypes.data + 32 * lo, n, scratch.ctypes.data)
        if len(scalars) == 1:
            key_p = np.full(len(in_p), scalars.ctypes.data, dtype=np.uint64)
        else:
            key_p = lane_pointers(scalars.ctypes.data + 32 * lo, n, _PAD_KEY.ctypes.data)
        fn = self._fn
        a_out, a_key, a_in = out_p.ctypes.data, key_p.ctypes.data, in_p.ctypes.data
        groups = len(in_p) // 8
        ok = True
        for g in range(groups):
            off = 64 * g
            status = fn(a_out + off, a_key + off, a_in + off)
            if status and not lanes_ok(status, min(8, n - 8 * g)):
                ok = False
        # keep the arrays alive until here (their addresses were used above)
        del scratch, in_p, out_p, key_p
        return ok
