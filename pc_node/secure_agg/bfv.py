"""BFV backend on TenSEAL: batched integer vectors (public side).

Parameters (fixed, so every peer can check them):

* N = 8192 slots per ciphertext;
* coefficient modulus 60+60+60+38 = 218 bits, the HE-standard ceiling for N = 8192
  at 128-bit classical security (the 38-bit prime is SEAL's key-switching prime);
* plaintext modulus t = 1152921504606601217, a 60-bit prime ≡ 1 (mod 2N) so batching
  works; it is the largest such prime below 2^60 that SEAL does not already use as a
  coefficient prime (the three above it are). A prime t makes ρ·S ≠ 0 for S ≠ 0.

Noise budget: a fresh ciphertext has ~105 bits; one multiplication by a full-size
plaintext costs ~73 bits, so a ciphertext survives exactly one ``mul_plain`` (after
any number of additions we use; tested with 2^14+ terms). ``depth`` enforces it.

Vectors longer than N are lists of chunks, each a full N-slot ciphertext
(zero-padded), so chunks of vectors of different lengths always line up.
No Galois or relinearisation keys are shipped: nothing rotates, and no two ciphertexts are
multiplied (a product's decryption noise would depend on its factors and the key holder could
read it; queries that need products run under Paillier, ``query_paillier``).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import tenseal as ts

from pc_common.errors import CryptoError

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
    check_same_key,
)

NAME = "bfv"
POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60, 60, 38)
PLAIN_MODULUS = 1152921504606601217
MAX_PLAIN_MULT_DEPTH = 1

_reference_parms: bytes | None = None


def new_context() -> Any:
    """A fresh private TenSEAL context with this module's parameters."""
    return ts.context(
        ts.SCHEME_TYPE.BFV,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        plain_modulus=PLAIN_MODULUS,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
    )


def public_bytes(ctx: Any) -> bytes:
    """Serialise the public part of ``ctx`` (works on a copy; never the secret key)."""
    pub = ctx.copy()
    pub.make_context_public()
    return pub.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )


def parms_bytes(ctx: Any) -> bytes:
    """SEAL's encoding of the encryption parameters (TenSEAL exposes no getter for t)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "parms")
        ctx.data.seal_context().key_context_data().parms().save(path)
        with open(path, "rb") as fh:
            return fh.read()


def reference_parms() -> bytes:
    global _reference_parms
    if _reference_parms is None:
        _reference_parms = parms_bytes(new_context())
    return _reference_parms


class BfvPublicContext(PublicContext):
    backend_name = NAME

    def __init__(self, ctx: Any, payload: bytes) -> None:
        self.ctx = ctx  # a public TenSEAL context
        self._payload = payload
        self._fingerprint = wire.key_fingerprint(payload)

    @property
    def fingerprint(self) -> bytes:
        return self._fingerprint

    @property
    def plaintext_modulus(self) -> int:
        return PLAIN_MODULUS

    @property
    def slots(self) -> int:
        return POLY_MODULUS_DEGREE

    @property
    def max_plain_mult_depth(self) -> int:
        return MAX_PLAIN_MULT_DEPTH

    def serialize(self) -> bytes:
        return wire.pack_context(wire.MAGIC_PUBLIC, NAME, self._payload)

    def __repr__(self) -> str:
        return f"<BfvPublicContext fingerprint={self._fingerprint.hex()}>"


class BfvCipherVector(CipherVector):
    def __init__(self, public: BfvPublicContext, chunks: list[Any], length: int, depth: int = 0) -> None:
        self.public = public
        self.chunks = chunks
        self.length = length
        self.depth = depth

    def serialize(self) -> bytes:
        payload = wire.pack_fields(*(c.serialize() for c in self.chunks))
        return wire.pack_ciphertext(NAME, self.public.fingerprint, self.depth, self.length, payload)


def _centre(values: list[int]) -> list[int]:
    t, half = PLAIN_MODULUS, PLAIN_MODULUS // 2
    out = []
    for v in values:
        v %= t
        out.append(v - t if v > half else v)
    return out


def _centre_array(values: np.ndarray) -> list[int]:
    """:func:`_centre` of a 1-D int64/uint64 array in bulk (what masks and pads come as)."""
    t = np.int64(PLAIN_MODULUS)
    v = (values % np.uint64(PLAIN_MODULUS)).astype(np.int64) if values.dtype.kind == "u" else values % t
    return np.where(v > t // 2, v - t, v).tolist()


def _padded_chunks(ints: list[int], n_chunks: int) -> list[list[int]]:
    n = POLY_MODULUS_DEGREE
    chunks = []
    for i in range(n_chunks):
        part = ints[i * n : (i + 1) * n]
        if len(part) < n:
            part = part + [0] * (n - len(part))
        chunks.append(part)
    return chunks


def _n_chunks(length: int) -> int:
    return -(-length // POLY_MODULUS_DEGREE)


def _zero_chunk(pub: BfvPublicContext) -> Any:
    return ts.bfv_vector(pub.ctx, [0] * POLY_MODULUS_DEGREE)


#: Ciphertext chunks per cluster task (each ~50 ms to encrypt; a task costs a few ms), and the
#: fewest chunks worth sending to a cluster at all.
TASK_CHUNKS = 2
OFFLOAD_MIN_CHUNKS = 2
_worker_publics: dict[bytes, "BfvPublicContext"] = {}


def encrypt_parts(public: bytes, parts: list[list[int]]) -> list[bytes]:
    """A cluster task: each N-slot part encrypted under a serialised public context (checked
    as ``load_public`` does; the last few are kept per worker process)."""
    fp = wire.key_fingerprint(wire.unpack_context(public, wire.MAGIC_PUBLIC, NAME))
    pub = _worker_publics.get(fp)
    if pub is None:
        pub = BfvBackend().load_public(public)
        if len(_worker_publics) >= 4:
            _worker_publics.pop(next(iter(_worker_publics)))
        _worker_publics[fp] = pub
    return [ts.bfv_vector(pub.ctx, part).serialize() for part in parts]


class BfvBackend(HeBackend):
    name = NAME
    fixed_plaintext_bound = (PLAIN_MODULUS - 1) // 2
    # Summing slots of one batched ciphertext needs rotations (Galois keys), which we never
    # generate or ship: ``group_sum`` raises, and per-group sums go through the key holder.
    supports_group_sum = False

    keys_module = "pc_node.secure_agg.bfv_keys"

    # --- anyone -------------------------------------------------------------------
    def load_public(self, data: bytes, **_options: Any) -> BfvPublicContext:
        payload = wire.unpack_context(data, wire.MAGIC_PUBLIC, NAME)
        try:
            ctx = ts.context_from(payload)
            ok = (
                ctx.is_public()
                and not ctx.has_secret_key()
                and ctx.has_public_key()
                and parms_bytes(ctx) == reference_parms()
            )
        except Exception:  # TenSEAL raises ValueError/RuntimeError/TypeError on junk
            ok = False
        if not ok:
            raise CryptoError("key context is malformed")
        return BfvPublicContext(ctx, payload)

    def encrypt(self, pub: PublicContext, values: IntVector, compute: Any = None) -> BfvCipherVector:
        """``compute`` (the node's ``pc_node.compute.Compute``, passed in): encrypt the chunks of a
        vector of several chunks on its cluster, from the serialised public context."""
        check_backend(pub, BfvPublicContext)
        ints = as_int_list(values)
        check_in_plaintext_space(ints, pub.plaintext_bound)
        parts = _padded_chunks(ints, _n_chunks(len(ints)))
        if compute is not None and len(parts) >= OFFLOAD_MIN_CHUNKS:
            public = pub.serialize()
            batches = [(public, parts[i:i + TASK_CHUNKS]) for i in range(0, len(parts), TASK_CHUNKS)]
            blobs = [b for out in compute.map_batches(encrypt_parts, batches, kind="bfv_encrypt") for b in out]
            chunks = [ts.bfv_vector_from(pub.ctx, b) for b in blobs]
        else:
            chunks = [ts.bfv_vector(pub.ctx, part) for part in parts]
        return BfvCipherVector(pub, chunks, len(ints))

    def add(self, a: CipherVector, b: CipherVector) -> BfvCipherVector:
        check_backend(a, BfvCipherVector)
        check_backend(b, BfvCipherVector)
        check_same_key(a, b)
        if a.length < b.length:
            a, b = b, a
        chunks = [x + y for x, y in zip(a.chunks, b.chunks)] + a.chunks[len(b.chunks) :]
        return BfvCipherVector(a.public, chunks, a.length, max(a.depth, b.depth))

    def sum(self, vectors: Any) -> BfvCipherVector:
        vectors = list(vectors)
        if not vectors:
            return super().sum(vectors)
        for v in vectors:
            check_backend(v, BfvCipherVector)
            check_same_key(vectors[0], v)
        vectors.sort(key=len, reverse=True)
        acc = vectors[0]
        chunks = [c.copy() for c in acc.chunks]
        for v in vectors[1:]:
            for i, c in enumerate(v.chunks):
                chunks[i].add_(c)  # in place on our own copies
        return BfvCipherVector(acc.public, chunks, acc.length, max(v.depth for v in vectors))

    def add_plain(self, cv: CipherVector, values: IntVector | int) -> BfvCipherVector:
        check_backend(cv, BfvCipherVector)
        if isinstance(values, np.ndarray) and values.dtype in (np.int64, np.uint64) and values.shape == (cv.length,):
            ints = _centre_array(values)
        else:
            ints = _centre(as_int_list(values, cv.length))
        parts = _padded_chunks(ints, len(cv.chunks))
        chunks = [c if not any(p) else c + p for c, p in zip(cv.chunks, parts)]
        return BfvCipherVector(cv.public, chunks, cv.length, cv.depth)

    def mul_plain(self, cv: CipherVector, values: IntVector | int) -> BfvCipherVector:
        check_backend(cv, BfvCipherVector)
        if cv.depth >= MAX_PLAIN_MULT_DEPTH:
            raise CryptoError("BFV ciphertexts allow one plaintext multiplication; noise budget exhausted")
        ints = _centre(as_int_list(values, cv.length))
        parts = _padded_chunks(ints, len(cv.chunks))
        # An all-zero plaintext would give a "transparent" (unencrypted) result.
        chunks = [c * p if any(p) else _zero_chunk(cv.public) for c, p in zip(cv.chunks, parts)]
        return BfvCipherVector(cv.public, chunks, cv.length, cv.depth + 1)

    def rerandomize(self, cv: CipherVector) -> BfvCipherVector:
        """Fresh Enc(0) per chunk. Hides which ciphertexts were combined, but NOT the
        noise pattern from a secret-key holder (BFV here is not circuit private)."""
        check_backend(cv, BfvCipherVector)
        chunks = [c + _zero_chunk(cv.public) for c in cv.chunks]
        return BfvCipherVector(cv.public, chunks, cv.length, cv.depth)

    def load_ciphertext(self, pub: PublicContext, data: bytes) -> BfvCipherVector:
        check_backend(pub, BfvPublicContext)
        depth, length, payload = wire.unpack_ciphertext(data, NAME, pub.fingerprint)
        if depth > MAX_PLAIN_MULT_DEPTH:
            raise CryptoError("ciphertext is malformed")
        blobs = wire.unpack_fields(payload, _n_chunks(length), "ciphertext is malformed")
        chunks = []
        for blob in blobs:
            try:
                chunk = ts.bfv_vector_from(pub.ctx, blob)
                ok = chunk.size() == POLY_MODULUS_DEGREE
            except Exception:  # TenSEAL parse errors
                ok = False
            if not ok:
                raise CryptoError("ciphertext is malformed")
            chunks.append(chunk)
        return BfvCipherVector(pub, chunks, length, depth)
