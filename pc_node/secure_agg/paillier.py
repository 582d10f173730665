"""Paillier backend: public side (encrypt, add, plaintext ops, (de)serialise).

Fast encryption (why this module exists rather than calling ``phe`` directly):
``phe`` computes ``r^n mod n^2`` with a fresh 2048-bit ``r`` per value (~90 values/s
per core at 2048 bits). We use the Damgård–Jurik–Nielsen short-exponent variant:
the key holder publishes ``hs = h^n mod n^2`` for ``h = -x^2 mod n`` with random
``x``; encryption is

    c = (1 + m·n) · hs^α  mod n^2,   α uniform in [0, 2^ℓ),  ℓ = 448 (2048-bit n)

and ``hs^α`` comes from a fixed-base table ``hs^(d·256^i)`` (one row per byte of
α), i.e. ℓ/8 = 56 multiplications mod n^2 instead of a full exponentiation.
Security rests on DCR plus the assumption that ``hs^α`` with short α is
indistinguishable from a random n-th residue (see docs/homomorphic.md).

Plaintexts are in Z_n; signed values are centred and kept below 2^(bits/2-2) so that
decryption modulo one prime factor suffices (``plaintext_bound``). Vectors are one ciphertext per
element (no packing: blinding needs an independent factor per element).

Key generation and decryption live in ``paillier_keys`` (key holder only).
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import secrets
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import gmpy2
import numpy as np

from pc_common.errors import CryptoError, InvalidInput

from . import wire
from .backend import (
    CipherVector,
    HeBackend,
    IntVector,
    PublicContext,
    SecretContext,
    as_int_list,
    check_backend,
    check_in_plaintext_space,
    check_layout,
    check_same_key,
)

NAME = "paillier"
DEFAULT_KEY_BITS = 2048
KEY_BITS_ALLOWED = (1024, 2048, 3072)  # 1024 is for tests only (see ``min_key_bits``)
# Short-exponent length ℓ = 4κ for the key's security level κ (80/112/128 bits).
ALPHA_BITS = {1024: 320, 2048: 448, 3072: 512}
PARALLEL_MIN_VALUES = 1024  # below this the hand-off to worker processes costs more than it saves
PARALLEL_MIN_POWMODS = 128  # exponentiations with (up to) 2048-bit exponents

_ONE = gmpy2.mpz(1)


class FixedBaseTable:
    """Powers ``base^(d·256^i) mod modulus`` for i < n_bytes, 0 < d < 256.

    ~7.5 MB for a 2048-bit key (56 rows × 255 entries × 512 bytes); built once per
    public context in about 0.1 s.
    """

    def __init__(self, base: Any, modulus: Any, n_bytes: int) -> None:
        f_mod = gmpy2.f_mod
        rows: list[list[Any]] = []
        b = gmpy2.mpz(base)
        for _ in range(n_bytes):
            row = [_ONE, b]
            for _d in range(2, 256):
                row.append(f_mod(row[-1] * b, modulus))
            rows.append(row)
            b = f_mod(row[255] * b, modulus)  # base^(256^(i+1))
        self.rows = rows


class PaillierPublicContext(PublicContext):
    backend_name = NAME

    def __init__(self, n: int, hs: int, key_bits: int, alpha_bits: int | None = None) -> None:
        self._n = gmpy2.mpz(n)
        self._n2 = self._n * self._n
        self._hs = gmpy2.mpz(hs)
        self.key_bits = key_bits
        self.alpha_bits = alpha_bits if alpha_bits is not None else ALPHA_BITS[key_bits]
        if self.alpha_bits % 8:
            raise InvalidInput("exponent length must be a whole number of bytes")
        self.alpha_bytes = self.alpha_bits // 8
        self.ct_bytes = 2 * ((key_bits + 7) // 8)
        self._payload = wire.pack_fields(
            key_bits.to_bytes(2, "big"),
            int(self._n).to_bytes((key_bits + 7) // 8, "big"),
            int(self._hs).to_bytes(self.ct_bytes, "big"),
        )
        self._fingerprint = wire.key_fingerprint(self._payload)
        self._table: FixedBaseTable | None = None

    @property
    def n(self) -> int:
        return int(self._n)

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    @property
    def plaintext_modulus(self) -> int:
        return int(self._n)

    @property
    def plaintext_bound(self) -> int:
        """2^(bits/2 - 2) - 1, below half of either prime factor of n.

        The key holder decrypts modulo one prime factor p only (one CRT half: twice
        as fast); every value that must survive decryption — sums, blinded
        comparisons — is kept below p/2, which this bound guarantees because both
        factors have exactly bits/2 bits. Zero tests still use ρ uniform mod n.
        """
        return (1 << (self.key_bits // 2 - 2)) - 1

    @property
    def slots(self) -> int:
        return 1

    @property
    def max_plain_mult_depth(self) -> None:
        return None

    def serialize(self) -> bytes:
        return wire.pack_context(wire.MAGIC_PUBLIC, NAME, self._payload)

    def table(self) -> FixedBaseTable:
        if self._table is None:
            self._table = FixedBaseTable(self._hs, self._n2, self.alpha_bytes)
        return self._table

    def __repr__(self) -> str:
        return f"<PaillierPublicContext bits={self.key_bits} fingerprint={self._fingerprint.hex()}>"


class PaillierCipherVector(CipherVector):
    def __init__(self, public: PaillierPublicContext, cts: list[Any], depth: int = 0) -> None:
        self.public = public
        self.cts = cts
        self.length = len(cts)
        self.depth = depth

    def serialize(self) -> bytes:
        width = self.public.ct_bytes
        payload = b"".join(c.to_bytes(width, "big") for c in self.cts)
        return wire.pack_ciphertext(NAME, self.public.fingerprint, min(self.depth, 255), self.length, payload)


def encrypt_with_randomness(pub: PaillierPublicContext, values: list[int], randomness: bytes) -> list[Any]:
    """The arithmetic of encryption with explicit α bytes (little-endian digits).

    A seam for known-answer tests; callers use ``PaillierBackend.encrypt``.
    """
    n, n2 = pub._n, pub._n2
    nb = pub.alpha_bytes
    if len(randomness) != nb * len(values):
        raise InvalidInput("wrong amount of randomness")
    rows = pub.table().rows
    f_mod = gmpy2.f_mod
    out = []
    for k, m in enumerate(values):
        acc = _ONE + (m % n) * n  # g^m with g = n + 1
        for row, d in zip(rows, randomness[k * nb : (k + 1) * nb]):
            if d:
                acc = f_mod(acc * row[d], n2)
        out.append(acc)
    return out


# --- process pool for large batches ----------------------------------------------------
# Workers get only public values (n, hs) and build their own table; spawn, not fork,
# because the node is a threaded gRPC server.
_WORKER_CTX: dict[tuple[int, int, int, int], PaillierPublicContext] = {}


def _worker_encrypt(n: int, hs: int, key_bits: int, alpha_bits: int, values: list[int]) -> list[Any]:
    key = (n, hs, key_bits, alpha_bits)
    pub = _WORKER_CTX.get(key)
    if pub is None:
        if len(_WORKER_CTX) >= 4:  # a few concurrent jobs' tables (~7.5 MB each)
            _WORKER_CTX.clear()
        pub = _WORKER_CTX[key] = PaillierPublicContext(n, hs, key_bits, alpha_bits)
    return encrypt_with_randomness(pub, values, secrets.token_bytes(pub.alpha_bytes * len(values)))


_POOL: ProcessPoolExecutor | None = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    """A process pool kept for the life of the process (workers keep their tables)."""
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS != workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False, cancel_futures=True)
            _POOL = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            _POOL_WORKERS = workers
        return _POOL


def shutdown_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
            _POOL = None


atexit.register(shutdown_pool)


def _parallel_encrypt(pub: PaillierPublicContext, values: list[int], workers: int) -> list[Any]:
    size = -(-len(values) // workers)
    parts = [values[i : i + size] for i in range(0, len(values), size)]
    pool = _pool(workers)
    futures = [
        pool.submit(_worker_encrypt, pub.n, int(pub._hs), pub.key_bits, pub.alpha_bits, part) for part in parts
    ]
    out: list[Any] = []
    for f in futures:
        out.extend(f.result())
    return out


def _worker_powmods(n2: Any, bases: list[Any], exps: list[int]) -> list[Any]:
    powmod = gmpy2.powmod
    return [powmod(b, e, n2) for b, e in zip(bases, exps)]


def _parallel_map(fn: Any, n2: Any, bases: list[Any], exps: list[int], workers: int) -> list[Any]:
    size = -(-len(bases) // workers)
    pool = _pool(workers)
    futures = [
        pool.submit(fn, n2, bases[i : i + size], exps[i : i + size]) for i in range(0, len(bases), size)
    ]
    out: list[Any] = []
    for f in futures:
        out.extend(f.result())
    return out


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


class PaillierBackend(HeBackend):
    name = NAME
    supports_group_sum = True

    keys_module = "pc_node.secure_agg.paillier_keys"

    # --- anyone -------------------------------------------------------------------
    def load_public(self, data: bytes, *, min_key_bits: int = DEFAULT_KEY_BITS) -> PaillierPublicContext:
        msg = "key context is malformed"
        payload = wire.unpack_context(data, wire.MAGIC_PUBLIC, NAME)
        kb, nb, hsb = wire.unpack_fields(payload, 3, msg)
        key_bits = int.from_bytes(kb, "big")
        if key_bits not in KEY_BITS_ALLOWED or key_bits < min_key_bits:
            raise CryptoError("key size is not allowed")
        n = gmpy2.mpz(int.from_bytes(nb, "big"))
        hs = gmpy2.mpz(int.from_bytes(hsb, "big"))
        if (
            len(nb) != (key_bits + 7) // 8
            or len(hsb) != 2 * len(nb)
            or n.bit_length() != key_bits
            or not n % 2
            or gmpy2.is_square(n)
            or not 1 < hs < n * n
            or gmpy2.gcd(hs, n) != 1
        ):
            raise CryptoError(msg)
        return PaillierPublicContext(int(n), int(hs), key_bits)

    def encrypt(self, pub: PublicContext, values: IntVector, *, workers: int | None = None) -> PaillierCipherVector:
        check_backend(pub, PaillierPublicContext)
        ints = as_int_list(values)
        check_in_plaintext_space(ints, pub.plaintext_bound)
        if workers is None:
            workers = default_workers() if len(ints) >= PARALLEL_MIN_VALUES else 1
        cts = None
        if workers > 1 and len(ints) >= 2 * workers:
            try:
                cts = _parallel_encrypt(pub, ints, workers)
            except (BrokenProcessPool, OSError):
                shutdown_pool()  # e.g. an interpreter that cannot spawn; same result, serially
                cts = None
        if cts is None:
            cts = encrypt_with_randomness(pub, ints, secrets.token_bytes(pub.alpha_bytes * len(ints)))
        return PaillierCipherVector(pub, cts)

    def add(self, a: CipherVector, b: CipherVector) -> PaillierCipherVector:
        check_backend(a, PaillierCipherVector)
        check_backend(b, PaillierCipherVector)
        check_same_key(a, b)
        if a.length < b.length:
            a, b = b, a
        n2, f_mod = a.public._n2, gmpy2.f_mod
        cts = [f_mod(x * y, n2) for x, y in zip(a.cts, b.cts)]
        cts.extend(a.cts[b.length :])
        return PaillierCipherVector(a.public, cts, max(a.depth, b.depth))

    def sum(self, vectors: Any) -> PaillierCipherVector:
        vectors = list(vectors)
        if not vectors:
            raise InvalidInput("nothing to sum")
        for v in vectors:
            check_backend(v, PaillierCipherVector)
            check_same_key(vectors[0], v)
        pub = vectors[0].public
        n2, f_mod = pub._n2, gmpy2.f_mod
        longest_first = sorted(vectors, key=len, reverse=True)
        acc = list(longest_first[0].cts)
        for v in longest_first[1:]:
            for i, c in enumerate(v.cts):
                acc[i] = f_mod(acc[i] * c, n2)
        return PaillierCipherVector(pub, acc, max(v.depth for v in vectors))

    def group_sum(self, cv: CipherVector, layout: IntVector, n_groups: int) -> PaillierCipherVector:
        """Per-group products of the per-slot ciphertexts = Enc(group sums); no key needed."""
        check_backend(cv, PaillierCipherVector)
        groups = check_layout(layout, cv.length, n_groups)
        n2, f_mod = cv.public._n2, gmpy2.f_mod
        acc = [_ONE] * n_groups  # trivial encryptions of 0; blinding rerandomises its outputs
        for g, c in zip(groups, cv.cts):
            acc[g] = f_mod(acc[g] * c, n2)
        return PaillierCipherVector(cv.public, acc, cv.depth)

    def add_plain(self, cv: CipherVector, values: IntVector | int) -> PaillierCipherVector:
        check_backend(cv, PaillierCipherVector)
        pub = cv.public
        n, n2, f_mod = pub._n, pub._n2, gmpy2.f_mod
        ints = as_int_list(values, cv.length)
        cts = [c if m % n == 0 else f_mod(c * (_ONE + (m % n) * n), n2) for c, m in zip(cv.cts, ints)]
        return PaillierCipherVector(pub, cts, cv.depth)

    def mul_plain(self, cv: CipherVector, values: IntVector | int) -> PaillierCipherVector:
        check_backend(cv, PaillierCipherVector)
        pub = cv.public
        n, n2 = pub._n, pub._n2
        half = n // 2
        ints = as_int_list(values, cv.length)
        cts: list[Any] = []
        todo: list[int] = []  # positions that need a real exponentiation
        exps: list[int] = []
        for i, (c, k) in enumerate(zip(cv.cts, ints)):
            k = k % n
            if k > half:
                k -= n  # a short negative exponent is cheaper than a long positive one
            if k == 0:
                cts.append(_ONE)  # trivial encryption of 0; callers rerandomise
            elif k == 1:
                cts.append(c)
            else:
                cts.append(None)
                todo.append(i)
                exps.append(k)
        bases = [cv.cts[i] for i in todo]
        workers = default_workers()
        results = None
        if workers > 1 and len(todo) >= PARALLEL_MIN_POWMODS:
            try:
                results = _parallel_map(_worker_powmods, n2, bases, exps, workers)
            except (BrokenProcessPool, OSError):
                shutdown_pool()
        if results is None:
            results = _worker_powmods(n2, bases, exps)
        for i, r in zip(todo, results):
            cts[i] = r
        return PaillierCipherVector(pub, cts, cv.depth + 1)

    def rerandomize(self, cv: CipherVector) -> PaillierCipherVector:
        check_backend(cv, PaillierCipherVector)
        pub = cv.public
        zeros = self.encrypt(pub, [0] * cv.length).cts
        n2, f_mod = pub._n2, gmpy2.f_mod
        return PaillierCipherVector(pub, [f_mod(c * z, n2) for c, z in zip(cv.cts, zeros)], cv.depth)

    def load_ciphertext(self, pub: PublicContext, data: bytes) -> PaillierCipherVector:
        check_backend(pub, PaillierPublicContext)
        depth, length, payload = wire.unpack_ciphertext(data, NAME, pub.fingerprint)
        width = pub.ct_bytes
        if len(payload) != length * width:
            raise CryptoError("ciphertext is malformed")
        n2 = pub._n2
        from_bytes = gmpy2.mpz.from_bytes
        raw = bytes(payload)
        cts = []
        for i in range(0, len(raw), width):
            c = from_bytes(raw[i : i + width], "big")
            if not 0 < c < n2:
                raise CryptoError("ciphertext is malformed")
            cts.append(c)
        return PaillierCipherVector(pub, cts, depth)
