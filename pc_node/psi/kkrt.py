"""KKRT16 two-party PSI (semi-honest): batched OPRF from OT extension.

Kolesnikov, Kumaresan, Rosulek and Trieu, "Efficient Batched Oblivious PRF with Applications
to Private Set Intersection" (CCS 2016), with the parameters of libOTe/libPSI and SecretFlow
PSI (:mod:`.kkrt_params`). The receiver R (set X) learns X ∩ Y; the sender S (set Y) learns |X|.

* 512 base OTs for the OPRF come from :mod:`pc_common.ot` — 128 Chou–Orlandi OTs extended by
  IKNP — with S as the OT receiver (secret choice string s ∈ {0,1}^512) and R as the OT sender
  (seed pairs k_i^0, k_i^1).
* After the base OTs S picks the code seed: C(x) = AES_{c1}(x) ‖ … ‖ AES_{c4}(x) (512 bits) over
  the 16-byte BLAKE3 hash x of an identifier.
* R cuckoo-hashes X into m bins (seeds drawn after the inputs are fixed, fresh on failure),
  sends u_j = G(k^0)_j ⊕ G(k^1)_j ⊕ C(x_j) per bin (rows of the transposed PRG matrices) and
  keeps t_j = G(k^0)_j. S has q_j = G(k^s)_j = t_j ⊕ (s ∧ (u_j ⊕ C(x_j))), and for each of its
  items y and hash function h sends F = BLAKE3(q_b ⊕ (s ∧ (u_b ⊕ C(y))))[:L], b = h(y), each of
  the three lists in a fresh random order (a repeated bin of one item gets a random filler).
  R matches BLAKE3(t_j)[:L] against the list of the hash function that placed x_j.

Messages (each method once, in order; every size checked, ``InvalidInput`` otherwise)::

    S = KkrtSender(ids)                 R = KkrtReceiver(ids)
    m1 = S.start()            S -> R    |Y|, OT round 1
    m2 = R.respond(m1)        R -> S    |X|, OT round 2
    m3 = S.extend(m2)         S -> R    OT round 3, code seed
    m4 = R.correct(m3)        R -> S    OT round 4, cuckoo seed, u (m × 64 bytes)
    m5 = S.masks(m4)          S -> R    3 × |Y| × L bytes
    R.finish(m5) -> list[str]           X ∩ Y in R's input order
"""
from __future__ import annotations

import struct
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pc_common.errors import InvalidInput
from pc_common.ot import iknp
from pc_common.ot.primitives import Rng, Steps, as_buffer, default_rng, draw, kdf, prg

from . import kkrt_kernels as K
from .encoding import normalise_ids
from .kkrt_params import (
    CODE_BITS, CODE_BYTES, HASHES, ITEM_BYTES, MAX_ITEMS, bin_count, cuckoo_bins, cuckoo_table,
    derive_key, hash_items, mask_bytes, match_rows, placement,
)

MAGIC = b"PCKK"
VERSION = 1
HEADER = "<4sBBHQ"          # magic, version, round, reserved, value (a count or m)
HEADER_SIZE = struct.calcsize(HEADER)
SEED = 16


def _frame(round_no: int, value: int) -> bytes:
    return struct.pack(HEADER, MAGIC, VERSION, round_no, 0, value)


def _open(data, round_no: int) -> tuple[int, memoryview]:
    what = f"KKRT message {round_no}"
    mv = as_buffer(data, what)
    if len(mv) < HEADER_SIZE:
        raise InvalidInput(f"{what}: too short")
    magic, version, rnd, reserved, value = struct.unpack_from(HEADER, mv, 0)
    if magic != MAGIC or version != VERSION or reserved:
        raise InvalidInput(f"{what}: not a KKRT message of this version")
    if rnd != round_no:
        raise InvalidInput(f"{what}: wrong round ({rnd})")
    return value, mv[HEADER_SIZE:]


def _size(what: str, body: memoryview, expected: int) -> None:
    if len(body) != expected:
        raise InvalidInput(f"{what}: wrong size ({len(body)} bytes, expected {expected})")


def _count(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ITEMS:
        raise InvalidInput(f"{what}: set size out of range")
    return value


def _normalised(ids) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise InvalidInput("identifiers must be a sequence of strings")
    norm = normalise_ids(ids)
    if len(norm) > MAX_ITEMS:
        raise InvalidInput("too many identifiers")
    return norm


def message_size(round_no: int, n_receiver: int, n_sender: int) -> int:
    """The exact size of KKRT message ``round_no`` for these set sizes (transports check it
    before buffering a message; the sessions check it again)."""
    body = {1: iknp.message_size(CODE_BITS, 1), 2: iknp.message_size(CODE_BITS, 2),
            3: iknp.message_size(CODE_BITS, 3) + SEED,
            4: iknp.message_size(CODE_BITS, 4) + SEED + bin_count(n_receiver) * CODE_BYTES,
            5: HASHES * n_sender * mask_bytes(n_receiver, n_sender)}
    if round_no not in body:
        raise InvalidInput("KKRT round must be 1..5")
    return HEADER_SIZE + body[round_no]


def announced_count(data, round_no: int) -> int:
    """The set size a message of round 1 (|Y|) or 2 (|X|) announces."""
    value, _ = _open(data, round_no)
    return _count(value, f"KKRT message {round_no}")


def _item_key(domain: bytes) -> np.ndarray:
    return derive_key("pc.psi.kkrt.v1 identifier hash", bytes(domain))


def code_words(items: np.ndarray, seed: bytes) -> np.ndarray:
    """The pseudo-random code C(x) = AES_{c1}(x) ‖ … ‖ AES_{c4}(x): (n, 64) uint8."""
    n = items.shape[0]
    out = np.empty((n, CODE_BYTES), dtype=np.uint8)
    flat = np.ascontiguousarray(items).reshape(-1)
    buf = np.empty(flat.size + 16, dtype=np.uint8)
    for i in range(CODE_BITS // 128):
        key = kdf(b"pc.psi.kkrt.v1/code", seed, bytes([i]))
        Cipher(algorithms.AES(key), modes.ECB()).encryptor().update_into(flat, buf)
        out[:, 16 * i:16 * (i + 1)] = buf[:flat.size].reshape(n, 16)
    return out


def _rows(seeds: list[bytes], m: int, xor_with: list[bytes] | None = None) -> np.ndarray:
    """Rows 0..m-1 of the transposed 512 × m bit matrix of PRG(seed_i) (⊕ PRG(xor_with_i)): (m, 64)."""
    nb = iknp.row_bytes(m)
    out = np.empty((nb * 8, CODE_BYTES), dtype=np.uint8)
    mat = np.empty((iknp.KAPPA, nb), dtype=np.uint8)
    for blk in range(CODE_BITS // iknp.KAPPA):
        for i in range(iknp.KAPPA):
            mat[i] = prg(seeds[blk * iknp.KAPPA + i], nb)
            if xor_with is not None:
                mat[i] ^= prg(xor_with[blk * iknp.KAPPA + i], nb)
        out[:, 16 * blk:16 * (blk + 1)] = iknp.transpose(mat)
    return out[:m]


class _Timed:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def _mark(self, name: str, t0: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0


class KkrtSender(_Timed):
    """The OPRF sender S (set Y): learns |X| only."""

    def __init__(self, ids, *, rng: Rng | None = None, domain: bytes = b"", bins: int | None = None) -> None:
        super().__init__()
        t0 = time.perf_counter()
        self._bins = bins                    # tests only: the receiver's forced table size
        self._rng = default_rng(rng)
        self._domain = bytes(domain)
        norm = _normalised(ids)
        self.count = len(norm)
        self._items = hash_items(norm, _item_key(self._domain))
        self._steps = Steps("start", "extend", "masks")
        self._mark("hash", t0)

    def start(self) -> bytes:
        self._steps.enter("start")
        s_bytes = draw(self._rng, CODE_BYTES)
        self._s = np.frombuffer(s_bytes, dtype=np.uint8).copy()
        choices = np.unpackbits(self._s, bitorder="little").astype(bool)
        self._ot = iknp.OtReceiver(choices, rng=self._rng, context=b"pc.psi.kkrt.v1|" + self._domain)
        return _frame(1, self.count) + self._ot.start()

    def extend(self, msg2) -> bytes:
        self._steps.enter("extend")
        n_r, body = _open(msg2, 2)
        self.receiver_count = _count(n_r, "KKRT message 2")
        _size("KKRT message 2", body, iknp.message_size(CODE_BITS, 2))
        out = self._ot.extend(body)
        self._code_seed = draw(self._rng, SEED)
        return _frame(3, 0) + out + self._code_seed

    def masks(self, msg4) -> bytes:
        self._steps.enter("masks")
        t0 = time.perf_counter()
        m, body = _open(msg4, 4)
        expected_m = bin_count(self.receiver_count) if self._bins is None else self._bins
        if m != expected_m:
            raise InvalidInput(f"KKRT message 4: {m} bins, expected {expected_m}")
        ot_size = iknp.message_size(CODE_BITS, 4)
        _size("KKRT message 4", body, ot_size + SEED + m * CODE_BYTES)
        seeds = self._ot.receive(body[:ot_size])
        cuckoo_seed = bytes(body[ot_size:ot_size + SEED])
        u = np.frombuffer(body[ot_size + SEED:], dtype=np.uint8).reshape(m, CODE_BYTES)
        key = derive_key("pc.psi.kkrt.v1 oprf output", self._ot.derive_key(b"kkrt-oprf"))
        self._mark("base_ot", t0)
        t0 = time.perf_counter()
        q = _rows([seeds[i].tobytes() for i in range(CODE_BITS)], m)
        self._mark("transpose", t0)
        t0 = time.perf_counter()
        bins = cuckoo_bins(self._items, cuckoo_seed, m)
        code = code_words(self._items, self._code_seed)
        self._mark("code", t0)
        t0 = time.perf_counter()
        L = mask_bytes(self.receiver_count, self.count)
        n = self.count
        filler = prg(draw(self._rng, SEED), HASHES * n * L).reshape(HASHES, n, L)
        out = K.sender_masks(key, q, u, self._s, bins, code, filler, L)
        perm_src = prg(draw(self._rng, SEED), HASHES * n * 8).view("<u8").reshape(HASHES, n)
        for h in range(HASHES):
            out[h] = out[h][np.argsort(perm_src[h])]
        self._mark("oprf", t0)
        return _frame(5, n) + out.tobytes()


class KkrtReceiver(_Timed):
    """The OPRF receiver R (set X): learns X ∩ Y (and |Y|)."""

    def __init__(self, ids, *, rng: Rng | None = None, domain: bytes = b"",
                 max_rehash: int = 16, bins: int | None = None) -> None:
        super().__init__()
        t0 = time.perf_counter()
        self._rng = default_rng(rng)
        self._domain = bytes(domain)
        self._ids = _normalised(ids)
        self.count = len(self._ids)
        self._items = hash_items(self._ids, _item_key(self._domain))
        self._m = bin_count(self.count) if bins is None else int(bins)   # ``bins``: tests only
        self._max_rehash = max_rehash
        self._steps = Steps("respond", "correct", "finish")
        self._mark("hash", t0)

    def respond(self, msg1) -> bytes:
        self._steps.enter("respond")
        n_s, body = _open(msg1, 1)
        self.sender_count = _count(n_s, "KKRT message 1")
        _size("KKRT message 1", body, iknp.message_size(CODE_BITS, 1))
        self._ot = iknp.OtSender(CODE_BITS, rng=self._rng, context=b"pc.psi.kkrt.v1|" + self._domain)
        out = self._ot.respond(body)
        t0 = time.perf_counter()
        self._cuckoo_seed, self._bins, self._table, self.cuckoo_attempts = cuckoo_table(
            self._items, self._m, lambda: draw(self._rng, SEED), self._max_rehash)
        self._mark("cuckoo", t0)
        return _frame(2, self.count) + out

    def correct(self, msg3) -> bytes:
        self._steps.enter("correct")
        t0 = time.perf_counter()
        _, body = _open(msg3, 3)
        ot_size = iknp.message_size(CODE_BITS, 3)
        _size("KKRT message 3", body, ot_size + SEED)
        k = np.frombuffer(draw(self._rng, 2 * CODE_BITS * 16), dtype=np.uint8).reshape(2, CODE_BITS, 16)
        ot4 = self._ot.send(body[:ot_size], k[0], k[1])
        code_seed = bytes(body[ot_size:])
        self._key = derive_key("pc.psi.kkrt.v1 oprf output", self._ot.derive_key(b"kkrt-oprf"))
        self._mark("base_ot", t0)
        t0 = time.perf_counter()
        m = self._m
        k0 = [k[0, i].tobytes() for i in range(CODE_BITS)]
        k1 = [k[1, i].tobytes() for i in range(CODE_BITS)]
        self._t = _rows(k0, m)
        u = _rows(k0, m, xor_with=k1)
        self._mark("transpose", t0)
        t0 = time.perf_counter()
        self._occupied, self._placed, self._hidx = placement(self._bins, self._table)
        code = code_words(self._items[self._placed], code_seed)
        u[self._occupied] ^= code
        self._mark("code", t0)
        return _frame(4, m) + ot4 + self._cuckoo_seed + u.tobytes()

    def finish(self, msg5) -> list[str]:
        self._steps.enter("finish")
        n_s, body = _open(msg5, 5)
        if n_s != self.sender_count:
            raise InvalidInput("KKRT message 5: set size differs from the one announced")
        L = mask_bytes(self.count, self.sender_count)
        _size("KKRT message 5", body, HASHES * n_s * L)
        t0 = time.perf_counter()
        theirs = np.frombuffer(body, dtype=np.uint8).reshape(HASHES, n_s, L)
        mine = K.receiver_masks(self._key, self._t, self._occupied, L)
        self._mark("oprf", t0)
        t0 = time.perf_counter()
        hit = np.zeros(self.count, dtype=bool)
        for h in range(HASHES):
            sel = np.nonzero(self._hidx == h)[0]
            found = match_rows(mine[sel], theirs[h])
            hit[self._placed[sel[found]]] = True
        self._t = None
        self._mark("match", t0)
        return [self._ids[i] for i in np.nonzero(hit)[0]]


def warm_up() -> float:
    """Load the numba kernels with the signatures a job uses (from numba's on-disk cache, or
    compiled once after installation) by running a tiny intersection; returns its seconds.
    Node processes call it in the background at start, so no job pays it."""
    t0 = time.perf_counter()
    ids = [f"W{i:03d}" for i in range(96)]           # already in normal form
    if intersect(ids[:64], ids[32:]) != ids[32:64]:
        raise AssertionError("KKRT warm-up intersection is wrong")
    return time.perf_counter() - t0


def intersect(receiver_ids, sender_ids, *, rng: Rng | None = None, domain: bytes = b"") -> list[str]:
    """Run both parties in process (tests, local use): R's items in Y."""
    s = KkrtSender(sender_ids, rng=rng, domain=domain)
    r = KkrtReceiver(receiver_ids, rng=rng, domain=domain)
    return r.finish(s.masks(r.correct(s.extend(r.respond(s.start())))))
