"""1-of-2 oblivious transfer of 128-bit messages: IKNP03 extension over 128 base OTs.

* Base OTs: Chou and Orlandi, "The Simplest Protocol for Oblivious Transfer"
  (LATINCRYPT 2015), in the prime-order subgroup of edwards25519 through libsodium
  (PyNaCl 1.6 binds no ristretto255 functions; every received point is checked to
  be canonical, in the main subgroup and not of small order, which gives the same
  prime-order group ristretto255 would). Keys are SHA-256 over (index, A, B, point).
* Extension: Ishai, Kilian, Nissim and Petrank, "Extending Oblivious Transfers
  Efficiently" (CRYPTO 2003), κ = 128, semi-honest. The roles of the base OTs are
  reversed: the extension *receiver* R is the base-OT sender (seeds k_i^0, k_i^1),
  the extension *sender* S is the base-OT receiver with secret choice bits s.
  Seeds are expanded with AES-128-CTR; R sends u^i = G(k_i^0) ⊕ G(k_i^1) ⊕ r, S
  forms q^i = G(k_i^{s_i}) ⊕ s_i·u^i, so that row j of the transposed matrices
  satisfies q_j = t_j ⊕ r_j·s. S sends y_j^b = m_j^b ⊕ H(q_j ⊕ b·s, j); R recovers
  m_j^{r_j} = y_j^{r_j} ⊕ H(t_j, j), H being the TCCR hash of :mod:`.primitives`
  (Guo–Katz–Wang–Yu, S&P 2020, show a tweakable correlation-robust hash suffices).

Rounds (every message has a fixed size given by ``count``; see :func:`message_size`)::

    r = OtReceiver(choices)           s = OtSender(count)
    m1 = r.start()          R -> S    A                      (16 + 32 bytes)
    m2 = s.respond(m1)      S -> R    B_0..B_127             (16 + 4096 bytes)
    m3 = r.extend(m2)       R -> S    u (128 × ⌈count/128⌉·16 bytes)
    m4 = s.send(m3, m0, m1) S -> R    y_j^0, y_j^1           (16 + 32·count bytes)
    out = r.receive(m4)               m_j^{choice_j}, (count, 16) uint8

Semi-honest only: a malicious R can choose inconsistent columns of u and learn bits
of s (KOS15 adds the consistency check that prevents it); see
docs/secure_comparison.md.
"""
from __future__ import annotations

import numpy as np
from nacl import bindings as sodium
from nacl import exceptions as nacl_errors

from pc_common.errors import InvalidInput

from .primitives import (
    U64,
    Rng,
    SessionStateError,
    Steps,
    Tccr,
    as_buffer,
    default_rng,
    draw,
    kdf,
    pack_header,
    parse_header,
    prg,
)

KAPPA = 128
POINT = 32
_MAGIC = b"PCOT"
_VERSION = 1
_HEADER = "<4sBBHQ"  # magic, version, round, reserved, count
HEADER_SIZE = 16
MAX_COUNT = 1 << 40


def row_bytes(count: int) -> int:
    """Bytes per row of the u matrix: ``count`` bits padded to whole AES blocks."""
    return -(-count // 128) * 16


def message_size(count: int, round_no: int) -> int:
    body = {1: POINT, 2: KAPPA * POINT, 3: KAPPA * row_bytes(count), 4: 32 * count}
    if round_no not in body:
        raise InvalidInput("OT round must be 1..4")
    return HEADER_SIZE + body[round_no]


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_COUNT:
        raise InvalidInput("OT count must be a positive integer")
    return int(count)


def open_message(data, round_no: int, count: int) -> memoryview:
    """Check a framed OT message's header and exact size; return its body."""
    what = f"OT message {round_no}"
    mv = as_buffer(data, what)
    magic, version, rnd, reserved, n = parse_header(_HEADER, mv, what)
    if magic != _MAGIC or version != _VERSION or reserved != 0:
        raise InvalidInput(f"{what}: not an OT message of this version")
    if rnd != round_no:
        raise InvalidInput(f"{what}: wrong round")
    if n != count:
        raise InvalidInput(f"{what}: OT count differs from this session's")
    if len(mv) != message_size(count, round_no):
        raise InvalidInput(f"{what}: wrong size")
    return mv[HEADER_SIZE:]


def frame(round_no: int, count: int) -> bytes:
    return pack_header(_HEADER, _MAGIC, _VERSION, round_no, 0, count)


# ---------------------------------------------------------------- bit matrix transpose

_M1 = np.uint64(0x00AA00AA00AA00AA)
_M2 = np.uint64(0x0000CCCC0000CCCC)
_M3 = np.uint64(0x00000000F0F0F0F0)


def transpose(mat: np.ndarray) -> np.ndarray:
    """Transpose a 128 × (8w) bit matrix stored as (128, w) uint8 (bit j of row i is
    bit j%8, LSB first, of byte j//8) into (8w, 16) uint8 (row j, bit i likewise).

    Vectorised 8×8 block transpose (Hacker's Delight, transpose8) on uint64 words.
    """
    rows, w = mat.shape
    if rows != KAPPA:
        raise InvalidInput("transpose expects 128 rows")
    # word (r8, c) holds bytes mat[8·r8 + k, c] for k = 0..7
    x = np.ascontiguousarray(mat.reshape(16, 8, w).transpose(0, 2, 1)).view(U64).reshape(16, w)
    t = (x ^ (x >> np.uint64(7))) & _M1
    x ^= t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & _M2
    x ^= t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & _M3
    x ^= t ^ (t << np.uint64(28))
    # now bit k of byte b of word (r8, c) is bit (8c + b) of row 8·r8 + k: output row 8c + b, byte r8
    return np.ascontiguousarray(x.view(np.uint8).reshape(16, w, 8).transpose(1, 2, 0)).reshape(8 * w, 16)


# ---------------------------------------------------------------- base OT (Chou–Orlandi)


def _scalar(rng: Rng) -> bytes:
    return sodium.crypto_core_ed25519_scalar_reduce(draw(rng, 64))


def _check_point(p: bytes, what: str) -> bytes:
    if not sodium.crypto_core_ed25519_is_valid_point(p):
        raise InvalidInput(f"{what}: invalid group element")
    return p


def _mul(s: bytes, p: bytes, what: str) -> bytes:
    try:
        return sodium.crypto_scalarmult_ed25519_noclamp(s, p)
    except (nacl_errors.RuntimeError, nacl_errors.ValueError, nacl_errors.TypeError) as exc:
        raise InvalidInput(f"{what}: degenerate group element") from exc


def _base_key(context: bytes, i: int, a_pt: bytes, b_pt: bytes, shared: bytes) -> bytes:
    return kdf(b"pc-gc/base-ot/v1", context, i.to_bytes(2, "little"), a_pt, b_pt, shared)


# ---------------------------------------------------------------- extension


def _derive(party, label: bytes) -> bytes:
    transcript = getattr(party, "_transcript", None)
    if transcript is None:
        raise SessionStateError("keys exist only after the base OTs")
    return kdf(b"pc-gc/ot/derived/" + label, party._context, transcript)


class OtReceiver:
    """Extension receiver R: learns m_j^{choice_j} and nothing about the other message."""

    def __init__(self, choices, *, rng: Rng | None = None, context: bytes = b"") -> None:
        c = np.asarray(choices)
        if c.ndim != 1 or c.dtype != np.bool_:
            raise InvalidInput("OT choices must be a 1-D bool array")
        self.count = _check_count(c.size)
        self._choices = c.copy()
        self._rng = default_rng(rng)
        self._context = bytes(context)
        self._steps = Steps("start", "extend", "receive")

    def start(self) -> bytes:
        self._steps.enter("start")
        self._a = _scalar(self._rng)
        self._A = sodium.crypto_scalarmult_ed25519_base_noclamp(self._a)
        return frame(1, self.count) + self._A

    def extend(self, msg2) -> bytes:
        self._steps.enter("extend")
        body = open_message(msg2, 2, self.count)
        pts = [_check_point(bytes(body[i * POINT:(i + 1) * POINT]), "OT message 2") for i in range(KAPPA)]
        a_a = _mul(self._a, self._A, "OT message 2")
        self._k0, k1 = [], []
        for i, b_pt in enumerate(pts):
            shared = _mul(self._a, b_pt, "OT message 2")
            self._k0.append(_base_key(self._context, i, self._A, b_pt, shared))
            k1.append(_base_key(self._context, i, self._A, b_pt, sodium.crypto_core_ed25519_sub(shared, a_a)))
        self._transcript = self._A + b"".join(pts)
        self._hash_key = kdf(b"pc-gc/ot/hash-key", self._context, self._transcript)
        nb = row_bytes(self.count)
        r = np.zeros(nb * 8, dtype=np.bool_)
        r[: self.count] = self._choices
        r_packed = np.packbits(r, bitorder="little")
        out = np.empty(message_size(self.count, 3), dtype=np.uint8)
        out[:HEADER_SIZE] = np.frombuffer(frame(3, self.count), dtype=np.uint8)
        u = out[HEADER_SIZE:].reshape(KAPPA, nb)
        for i in range(KAPPA):
            np.bitwise_xor(prg(self._k0[i], nb), prg(k1[i], nb), out=u[i])
            u[i] ^= r_packed
        return out.tobytes()

    def derive_key(self, label: bytes) -> bytes:
        """A 16-byte key both parties derive from the base-OT transcript (after round 2/3)."""
        return _derive(self, label)

    def begin_receive(self) -> "_Decryptor":
        """Mark the final step done and return a chunked decryptor (for embedding)."""
        self._steps.enter("receive")
        return _Decryptor(self._k0, self._choices, self._hash_key)

    def receive(self, msg4) -> np.ndarray:
        dec = self.begin_receive()
        body = open_message(msg4, 4, self.count)
        y = np.frombuffer(body, dtype=U64).reshape(self.count, 2, 2)
        return dec.decrypt(0, self.count, y).view(np.uint8).reshape(self.count, 16)


class _Decryptor:
    def __init__(self, k0: list[bytes], choices: np.ndarray, hash_key: bytes) -> None:
        self._k0 = k0
        self._choices = choices
        self._hash_key = hash_key

    def decrypt(self, j0: int, j1: int, y: np.ndarray) -> np.ndarray:
        """Chosen messages of OTs j0..j1-1 from their ciphertexts y (j1-j0, 2, 2) uint64.

        ``j0`` must be a multiple of 128. Safe to call from several threads.
        """
        t = _columns(self._k0, None, None, j0, j1)
        pick = y[np.arange(j1 - j0), self._choices[j0:j1].astype(np.intp)]
        return pick ^ Tccr(self._hash_key).hash(t, 0, np.arange(j0, j1, dtype=U64))


def _columns(seeds: list[bytes], s_bits, u, j0: int, j1: int) -> np.ndarray:
    """Rows j0..j1-1 of the transposed matrix G(seed_i) ⊕ s_i·u^i as (n, 2) uint64."""
    if j0 % 128:
        raise InvalidInput("OT chunk must start at a multiple of 128")
    c0, w = j0 // 8, row_bytes(j1 - j0)
    mat = np.empty((KAPPA, w), dtype=np.uint8)
    for i in range(KAPPA):
        mat[i] = prg(seeds[i], w, c0 // 16)
        if s_bits is not None and s_bits[i]:
            mat[i] ^= u[i, c0:c0 + w]
    return transpose(mat)[: j1 - j0].view(U64)


class OtSender:
    """Extension sender S: sends (m_j^0, m_j^1) pairs, learns nothing about the choices."""

    def __init__(self, count: int, *, rng: Rng | None = None, context: bytes = b"") -> None:
        self.count = _check_count(count)
        self._rng = default_rng(rng)
        self._context = bytes(context)
        self._steps = Steps("respond", "send")

    def respond(self, msg1) -> bytes:
        self._steps.enter("respond")
        body = open_message(msg1, 1, self.count)
        a_pt = _check_point(bytes(body), "OT message 1")
        s_bytes = draw(self._rng, KAPPA // 8)
        self._s_bits = np.unpackbits(np.frombuffer(s_bytes, dtype=np.uint8), bitorder="little").astype(bool)
        self._s = np.frombuffer(s_bytes, dtype=U64).copy()
        self._seeds, pts = [], []
        for i in range(KAPPA):
            b = _scalar(self._rng)
            b_g = sodium.crypto_scalarmult_ed25519_base_noclamp(b)
            b_pt = (b_g, sodium.crypto_core_ed25519_add(a_pt, b_g))[int(self._s_bits[i])]
            self._seeds.append(_base_key(self._context, i, a_pt, b_pt, _mul(b, a_pt, "OT message 1")))
            pts.append(b_pt)
        self._transcript = a_pt + b"".join(pts)
        self._hash_key = kdf(b"pc-gc/ot/hash-key", self._context, self._transcript)
        return frame(2, self.count) + b"".join(pts)

    def derive_key(self, label: bytes) -> bytes:
        return _derive(self, label)

    def begin_send(self, msg3) -> "_Encryptor":
        """Check round 3 and return a chunked encryptor (for embedding); marks 'send' done."""
        self._steps.enter("send")
        body = open_message(msg3, 3, self.count)
        u = np.frombuffer(body, dtype=np.uint8).reshape(KAPPA, row_bytes(self.count))
        return _Encryptor(self._seeds, self._s_bits, self._s, u, self._hash_key)

    def send(self, msg3, m0, m1) -> bytes:
        enc = self.begin_send(msg3)
        pair = [np.asarray(m) for m in (m0, m1)]
        if any(m.shape != (self.count, 16) or m.dtype != np.uint8 for m in pair):
            raise InvalidInput("OT messages must be (count, 16) uint8 arrays")
        y = enc.encrypt(0, self.count, *(np.ascontiguousarray(m).view(U64) for m in pair))
        return frame(4, self.count) + y.tobytes()


class _Encryptor:
    def __init__(self, seeds, s_bits, s, u, hash_key) -> None:
        self._seeds, self._s_bits, self._s, self._u = seeds, s_bits, s, u
        self._hash_key = hash_key

    def encrypt(self, j0: int, j1: int, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
        """Ciphertexts (j1-j0, 2, 2) uint64 of OTs j0..j1-1; m0, m1 are (j1-j0, 2) uint64.

        ``j0`` must be a multiple of 128. Safe to call from several threads.
        """
        q = _columns(self._seeds, self._s_bits, self._u, j0, j1)
        x = np.empty((2, j1 - j0, 2), dtype=U64)
        x[0] = q
        np.bitwise_xor(q, self._s, out=x[1])
        h = Tccr(self._hash_key).hash(x, 0, np.arange(j0, j1, dtype=U64))
        out = np.empty((j1 - j0, 2, 2), dtype=U64)
        np.bitwise_xor(m0, h[0], out=out[:, 0])
        np.bitwise_xor(m1, h[1], out=out[:, 1])
        return out
