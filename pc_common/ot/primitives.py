"""Symmetric building blocks shared by the OT extension, the garbling (pc_node.secure_agg.gc) and KKRT16 PSI (pc_node.psi.kkrt).

* :class:`Tccr` — the tweakable circular correlation-robust hash of Guo, Katz, Wang
  and Yu, "Efficient and Secure Multiparty Computation from Fixed-Key Block
  Ciphers" (IEEE S&P 2020), construction TMMO^π:

      H(x, i) = π(π(x) ⊕ i) ⊕ π(x)

  with π = AES-128 under a key fixed for the session (both parties derive it from
  the base-OT transcript, so neither chooses it and no key is shared across
  sessions). This is the construction the paper proves TCCR in the random-
  permutation model (and the one emp-toolkit ships as ``TCCRH``). The one-call
  variant π(σ(x) ⊕ i) ⊕ σ(x) ⊕ i is *not* TCCR: two queries (x, i) and
  (x ⊕ σ⁻¹(i ⊕ i'), i') hit the same π input, so it is not used.
  Hashing is vectorised: every call hashes a whole batch with two ``update_into``
  calls on one AES-ECB context.
* :func:`prg` — AES-128-CTR keystream (the seed is the AES key), seekable by
  block, used to expand base-OT seeds and the garbler's label seed.
* :func:`kdf` — SHA-256 (pyca/cryptography), domain-separated, length-prefixed.
* :class:`Steps` — the once-only, in-order state machine of every session.

Labels and hash inputs are numpy ``uint64`` arrays whose last axis has length 2
(one 128-bit block, little-endian), i.e. the same bytes as ``(…, 16) uint8``.
"""
from __future__ import annotations

import secrets
import struct
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pc_common.errors import InvalidInput

Rng = Callable[[int], bytes]
U64 = np.dtype("<u8")
BLOCK = 16


class SessionStateError(InvalidInput):
    """A session step was called twice or out of order."""


def default_rng(rng: Rng | None) -> Rng:
    return secrets.token_bytes if rng is None else rng


def draw(rng: Rng, n: int) -> bytes:
    """``n`` bytes from ``rng``, checking the injected source keeps its contract."""
    out = rng(n)
    if not isinstance(out, (bytes, bytearray)) or len(out) != n:
        raise InvalidInput("random source returned the wrong number of bytes")
    return bytes(out)


def kdf(label: bytes, *parts: bytes, size: int = 16) -> bytes:
    """SHA-256 over a label and length-prefixed parts, truncated to ``size`` bytes."""
    h = hashes.Hash(hashes.SHA256())
    h.update(struct.pack("<H", len(label)) + label)
    for p in parts:
        h.update(struct.pack("<Q", len(p)))
        h.update(p)
    return h.finalize()[:size]


class Steps:
    """Each named step may run once, in the declared order; a failed step still counts."""

    def __init__(self, *names: str) -> None:
        self._names = names
        self._done = 0

    def enter(self, name: str) -> None:
        if self._done >= len(self._names) or self._names[self._done] != name:
            raise SessionStateError(f"session step '{name}' called twice or out of order")
        self._done += 1


def _encrypt_into(enc, data: np.ndarray) -> np.ndarray:
    """AES over the bytes of a contiguous array; returns a new array of the same shape."""
    flat = data.reshape(-1).view(np.uint8)
    out = np.empty(flat.size + BLOCK, dtype=np.uint8)
    enc.update_into(flat, out)
    return out[: flat.size].view(data.dtype).reshape(data.shape)


class Tccr:
    """TMMO^π tweakable circular correlation-robust hash (GKWY20), batched.

    Not thread-safe (one AES context); make one per worker thread.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise InvalidInput("hash key must be 16 bytes")
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def permute(self, x: np.ndarray) -> np.ndarray:
        return _encrypt_into(self._enc, np.ascontiguousarray(x))

    def hash(self, x: np.ndarray, tweak_hi: np.ndarray | int, tweak_lo: np.ndarray | int) -> np.ndarray:
        """H(x, i) for every block of ``x`` (shape (…, 2) uint64).

        The tweak of a block is the 128-bit value ``tweak_hi·2^64 + tweak_lo``; both
        parts broadcast against ``x.shape[:-1]``. Callers keep tweaks unique.
        """
        p = self.permute(x)
        z = p.copy()
        for word, tweak in ((0, tweak_lo), (1, tweak_hi)):
            if not (isinstance(tweak, int) and tweak == 0):
                z[..., word] ^= np.asarray(tweak, dtype=U64)
        y = self.permute(z)
        y ^= p
        return y


_ZEROS = np.zeros(0, dtype=np.uint8)


def _zeros(n: int) -> np.ndarray:
    """A shared read-only all-zero buffer of at least ``n`` bytes (AES-CTR input)."""
    global _ZEROS
    if _ZEROS.size < n:
        z = np.zeros(max(n, 2 * _ZEROS.size), dtype=np.uint8)
        z.setflags(write=False)
        _ZEROS = z
    return _ZEROS[:n]


def prg(seed: bytes, nbytes: int, block_offset: int = 0) -> np.ndarray:
    """``nbytes`` of the AES-CTR keystream of ``seed`` (the seed is the AES key).

    The stream starts at counter block ``block_offset``, so disjoint byte ranges of
    one seed's stream can be produced independently and in any order.
    """
    nonce = (block_offset % (1 << 128)).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    buf = np.empty(nbytes + BLOCK, dtype=np.uint8)
    enc.update_into(_zeros(nbytes), buf)
    return buf[:nbytes]


def lsb_mask(labels: np.ndarray) -> np.ndarray:
    """All-ones uint64 where the label's point-and-permute bit is 1, else 0; shape (…, 1)."""
    return np.negative(labels[..., :1] & np.uint64(1))


def pack_header(fmt: str, *values) -> bytes:
    return struct.pack(fmt, *values)


def parse_header(fmt: str, data, what: str) -> tuple:
    size = struct.calcsize(fmt)
    if len(data) < size:
        raise InvalidInput(f"{what}: message too short")
    return struct.unpack_from(fmt, data, 0)


def as_buffer(data, what: str) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{what}: message must be bytes")
    mv = memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv
