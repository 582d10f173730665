"""Elliptic-curve backends for PSI behind one interface, and the choice between them.

An :class:`EcBackend` multiplies many group elements by one secret scalar
(:meth:`~EcBackend.scalarmult_batch`) or by one scalar each (:meth:`~EcBackend.scalarmult_each`),
and hashes normalised identifiers to group elements (:meth:`~EcBackend.hash_to_points`).
Elements are always 32 bytes, so every protocol message is a flat byte string.

Backends (see ``docs/psi.md`` for speeds and caveats):

============== ======= ==================================================================
name           curve   implementation
============== ======= ==================================================================
``ifma``       x25519  Intel crypto_mb ``mbx_x25519_mb8`` (AVX-512 IFMA CPUs only)
``libsodium``  x25519  libsodium through PyNaCl's cffi module (portable default)
``ifma-sm2``   sm2     Intel crypto_mb ``mbx_sm2_ecdh_mb8`` (AVX-512 IFMA CPUs only)
``openssl-sm2`` sm2    the system OpenSSL 3 ``libcrypto`` through ctypes (slow fallback)
============== ======= ==================================================================

:func:`best_backend` returns the fastest one available for a curve; the environment variable
``PC_PSI_BACKEND`` forces one by name. Work is spread over a shared thread pool: the C calls
release the GIL (cffi and ctypes both do), so threads scale with cores without the cost of
shipping arrays to processes. ``PC_PSI_WORKERS`` sets the pool size (default: all cores).
"""
from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput

from .encoding import POINT_LEN, as_points
from .randomness import Rng

__all__ = [
    "CURVES",
    "EcBackend",
    "available_backends",
    "backend_status",
    "best_backend",
    "get_backend",
    "register_backend",
    "worker_count",
]

CURVES = ("x25519", "sm2")
ENV_BACKEND = "PC_PSI_BACKEND"
ENV_WORKERS = "PC_PSI_WORKERS"
#: Below this many points per worker a batch is computed on the calling thread.
MIN_POINTS_PER_WORKER = 64

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def worker_count() -> int:
    """Threads used for EC work: ``PC_PSI_WORKERS`` or the number of usable cores."""
    env = os.environ.get(ENV_WORKERS, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise InvalidInput(f"{ENV_WORKERS} must be an integer") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_pools: dict[int, ThreadPoolExecutor] = {}


def _get_pool(size: int) -> ThreadPoolExecutor:
    # One pool per size, never shut down: servers call this from many threads at once, and
    # replacing a pool under another caller's feet made its submit() fail.
    with _pool_lock:
        pool = _pools.get(size)
        if pool is None or pool._shutdown:  # a worker saw a stray wake-up and closed it
            pool = _pools[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="pc-psi-ec")
        return pool


def run_sliced(fn: Callable[[int, int], object], n: int, workers: int | None = None,
               align: int = 1) -> list:
    """Run ``fn(lo, hi)`` over slices covering ``range(n)`` on the shared pool; returns results.

    Slice boundaries are multiples of ``align`` (the multi-buffer backends work in groups of 8).
    """
    w = workers or worker_count()
    if n <= 0:
        return []
    if w <= 1 or n < 2 * MIN_POINTS_PER_WORKER:
        return [fn(0, n)]
    parts = min(w, max(1, n // MIN_POINTS_PER_WORKER))
    step = -(-n // parts)
    step = -(-step // align) * align
    bounds = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    if len(bounds) == 1:
        return [fn(0, n)]
    pool = _get_pool(w)
    futures = [pool.submit(fn, lo, hi) for lo, hi in bounds[1:]]
    first = fn(*bounds[0])  # the calling thread takes a share too
    return [first] + [f.result() for f in futures]


class EcBackend(ABC):
    """Batch scalar multiplication and hash-to-group for one curve.

    Points are 32-byte strings; a batch is either concatenated ``bytes`` or an ``(n, 32)``
    uint8 array, and results come back in the same form. A received point that is malformed,
    off the allowed encoding, or of small order raises :class:`CryptoError` for the whole batch.
    """

    name: ClassVar[str]
    curve: ClassVar[str]
    #: Rough relative speed, used to rank available backends (higher is faster).
    speed_rank: ClassVar[int] = 0
    scalar_len: ClassVar[int] = 32
    #: multi-buffer width: slices handed to ``_mul`` start at multiples of this
    lane_width: ClassVar[int] = 1

    # ---------------------------------------------------------------- availability
    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """``None`` when usable on this machine, else a short human-readable reason."""

    # ---------------------------------------------------------------- scalars
    @abstractmethod
    def random_scalar(self, rng: Rng | None = None) -> bytes:
        """A fresh secret scalar (32 bytes) from ``rng`` (default: ``secrets``)."""

    def check_scalar(self, scalar: bytes) -> bytes:
        if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != self.scalar_len:
            raise CryptoError("secret scalar must be 32 bytes")
        return bytes(scalar)

    # ---------------------------------------------------------------- points
    @abstractmethod
    def validate_points(self, points: np.ndarray) -> None:
        """Cheap vectorised encoding checks; raise CryptoError on any bad row."""

    @abstractmethod
    def hash_to_points(self, ids: Sequence[str], domain: bytes) -> np.ndarray:
        """Hash normalised identifiers to group elements, ``(n, 32)`` uint8."""

    @abstractmethod
    def _mul(self, scalars: np.ndarray, inp: np.ndarray, out: np.ndarray, lo: int, hi: int) -> bool:
        """Multiply rows ``lo:hi`` of ``inp`` into ``out``; ``scalars`` is ``(1, 32)`` (one scalar
        for all) or ``(n, 32)`` (one per row). Return True when every row succeeded."""

    def scalarmult_batch(self, scalar: bytes, points: bytes | np.ndarray) -> bytes | np.ndarray:
        """``points`` each multiplied by ``scalar`` (same order, same container type)."""
        key = np.frombuffer(self.check_scalar(scalar), dtype=np.uint8).reshape(1, -1)
        return self._run(key, points)

    def scalarmult_later(self, scalar: bytes, points: np.ndarray) -> Callable[[], np.ndarray]:
        """``scalarmult_batch`` for a caller that needs the result only later: calling the returned
        function gives it. Here it is computed at once; a backend that works elsewhere
        (``pc_node.compute``) starts it and returns, so several calls run while the caller goes on."""
        out = self.scalarmult_batch(scalar, points)
        return lambda: out

    def scalarmult_each(self, scalars: bytes | np.ndarray, points: bytes | np.ndarray) -> bytes | np.ndarray:
        """Row ``i`` of ``points`` multiplied by row ``i`` of ``scalars``."""
        ks = as_points(scalars) if not isinstance(scalars, np.ndarray) else scalars
        if ks.dtype != np.uint8 or ks.ndim != 2 or ks.shape[1] != self.scalar_len:
            raise CryptoError("scalars must be 32 bytes each")
        if len(ks) != len(as_points(points)):
            raise CryptoError("one scalar per point is needed")
        return self._run(np.ascontiguousarray(ks), points)

    def _run(self, scalars: np.ndarray, points: bytes | np.ndarray) -> bytes | np.ndarray:
        as_bytes = not isinstance(points, np.ndarray)
        inp = np.ascontiguousarray(as_points(points))
        n = len(inp)
        out = np.empty((n, POINT_LEN), dtype=np.uint8)
        if n:
            self.validate_points(inp)
            ok = run_sliced(lambda lo, hi: self._mul(scalars, inp, out, lo, hi), n,
                            align=self.lane_width)
            if not all(ok) or not out.any(axis=1).all():
                raise CryptoError("a received point is invalid or of small order")
        return out.tobytes() if as_bytes else out

    def __repr__(self) -> str:  # never shows key material; there is none in a backend
        return f"<{type(self).__name__} {self.name}/{self.curve}>"


# -------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[EcBackend]] = {}
_INSTANCES: dict[str, EcBackend] = {}
_registry_lock = threading.Lock()


def register_backend(cls: type[EcBackend]) -> type[EcBackend]:
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_registered() -> None:
    # Imported lazily so that importing the package never loads native libraries.
    from . import ifma, sm2, x25519  # noqa: F401


def backend_status() -> dict[str, tuple[str, str | None]]:
    """``{name: (curve, reason or None)}`` for every known backend."""
    _ensure_registered()
    return {name: (cls.curve, cls.unavailable_reason()) for name, cls in sorted(_REGISTRY.items())}


def available_backends(curve: str = "x25519") -> list[str]:
    """Names of the usable backends for ``curve``, fastest first."""
    _check_curve(curve)
    _ensure_registered()
    usable = [c for c in _REGISTRY.values() if c.curve == curve and c.unavailable_reason() is None]
    return [c.name for c in sorted(usable, key=lambda c: -c.speed_rank)]


def get_backend(name: str) -> EcBackend:
    """The backend called ``name``; FailedPrecondition (with the reason) if it can't run here."""
    _ensure_registered()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise InvalidInput(f"unknown PSI backend {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    with _registry_lock:
        inst = _INSTANCES.get(name)
        if inst is None:
            reason = cls.unavailable_reason()
            if reason is not None:
                raise FailedPrecondition(f"PSI backend {name!r} is not usable here: {reason}")
            inst = _INSTANCES[name] = cls()
        return inst


def best_backend(curve: str = "x25519") -> EcBackend:
    """The fastest usable backend for ``curve`` (or the one ``PC_PSI_BACKEND`` names)."""
    _check_curve(curve)
    forced = os.environ.get(ENV_BACKEND, "").strip()
    if forced:
        backend = get_backend(forced)
        if backend.curve != curve:
            raise InvalidInput(f"{ENV_BACKEND}={forced!r} is a backend for curve {backend.curve!r}, "
                               f"not {curve!r}")
        return backend
    names = available_backends(curve)
    if not names:
        if curve == "sm2":
            raise FailedPrecondition(
                "SM2 curve needs a CPU with AVX-512 IFMA (Intel crypto_mb) or a system OpenSSL 3 "
                "libcrypto with SM2; neither is available here"
            )
        raise FailedPrecondition(f"no PSI backend is usable for curve {curve!r}")
    return get_backend(names[0])


def resolve_backend(backend: EcBackend | str | None, curve: str = "x25519") -> EcBackend:
    if backend is None:
        return best_backend(curve)
    if isinstance(backend, str):
        backend = get_backend(backend)
    if not isinstance(backend, EcBackend):
        raise InvalidInput("backend must be an EcBackend or a backend name")
    return backend


def _check_curve(curve: str) -> None:
    if curve not in CURVES:
        raise InvalidInput(f"unknown curve {curve!r}; supported: {', '.join(CURVES)}")

