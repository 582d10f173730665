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
    m2 = R.respond(m1)        R -> S    |X|, OT round 2, cuckoo seed
    m3 = S.extend(m2)         S -> R    OT round 3, code seed
    m4 = R.correct(m3)        R -> S    OT round 4, u (m × 64 bytes)
    m5 = S.masks(m4)          S -> R    3 × |Y| × L bytes
    R.finish(m5) -> list[str]           X ∩ Y in R's input order
"""
from __future__ import annotations

import struct
import time

import numpy as np

from pc_common.errors import InvalidInput
from pc_common.ot import iknp
from pc_common.ot.primitives import Rng, SessionStateError, Steps, as_buffer, default_rng, draw, kdf, prg

from .encoding import normalise_ids
from .kkrt_params import (
    CODE_BITS, CODE_BYTES, HASHES, MAX_ITEMS, bin_count, cuckoo_bins, cuckoo_table, RowMatcher,
    mask_bytes, placement,
)
from .kkrt_profiles import PROFILES, profile

MAGIC = b"PCKK"
VERSION = 2                 # 2: the cuckoo seed travels in message 2 (was in message 4)
HEADER = "<4sBBHQ"          # magic, version, round, reserved, value (a count or m)
HEADER_SIZE = struct.calcsize(HEADER)
SEED = 16
BATCH_BINS = 1 << 14        # bins per pipelined batch of message 4 (1 MiB of rows u; a multiple of 128)


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
    body = {1: iknp.message_size(CODE_BITS, 1), 2: iknp.message_size(CODE_BITS, 2) + SEED,
            3: iknp.message_size(CODE_BITS, 3) + SEED,
            4: iknp.message_size(CODE_BITS, 4) + bin_count(n_receiver) * CODE_BYTES,
            5: HASHES * n_sender * mask_bytes(n_receiver, n_sender)}
    if round_no not in body:
        raise InvalidInput("KKRT round must be 1..5")
    return HEADER_SIZE + body[round_no]


def announced_count(data, round_no: int) -> int:
    """The set size a message of round 1 (|Y|) or 2 (|X|) announces."""
    value, _ = _open(data, round_no)
    return _count(value, f"KKRT message {round_no}")


def _item_key(profile, domain: bytes):
    return profile.key("pc.psi.kkrt.v1 identifier hash", bytes(domain))


class _RowStream:
    """Rows of the transposed 512 × m bit matrix of PRG(seed_i), batch after batch of bins.

    One keystream per seed continues from batch to batch, so the rows
    equal those of the whole matrix (``prg(seed, m/8)``) cut at multiples of 128 bins.
    ``pair_with``: also the rows of PRG(seed_i) ⊕ PRG(pair_with_i) (the receiver's t and u).
    The PRG is the profile's (AES-128-CTR, or SM4-CTR in the national profile).
    """

    def __init__(self, profile, seeds: list[bytes], pair_with: list[bytes] | None = None) -> None:
        def streams(keys):
            return [profile.stream(k) for k in keys]
        self._a = streams(seeds)
        self._b = streams(pair_with) if pair_with is not None else None

    def next(self, count: int):
        """The next ``count`` rows (a multiple of 128 except for the last batch): (count, 64),
        or a pair of them with ``pair_with``."""
        nb = iknp.row_bytes(count)
        zeros = np.zeros(nb, dtype=np.uint8)
        buf = np.empty(nb + 16, dtype=np.uint8)
        mat = np.empty((iknp.KAPPA, nb), dtype=np.uint8)
        mat2 = np.empty_like(mat) if self._b is not None else None
        out = np.empty((nb * 8, CODE_BYTES), dtype=np.uint8)
        out2 = np.empty_like(out) if self._b is not None else None
        for blk in range(CODE_BITS // iknp.KAPPA):
            for i in range(iknp.KAPPA):
                j = blk * iknp.KAPPA + i
                self._a[j].update_into(zeros, buf)
                mat[i] = buf[:nb]
                if mat2 is not None:
                    self._b[j].update_into(zeros, buf)
                    np.bitwise_xor(mat[i], buf[:nb], out=mat2[i])
            out[:, 16 * blk:16 * (blk + 1)] = iknp.transpose(mat)
            if out2 is not None:
                out2[:, 16 * blk:16 * (blk + 1)] = iknp.transpose(mat2)
        return (out[:count], out2[:count]) if out2 is not None else out[:count]


def _split(pieces, round_no: int, head: int, row: int, rows_for, align: int = 1):
    """Message ``round_no`` arriving in ``pieces`` (bytes-like, any cut): yields
    ``("head", value, head bytes)`` once, then ``("rows", first row, (k, row) uint8)`` in order,
    k a multiple of ``align`` except at the end. ``rows_for(value)`` gives (and checks) the
    row count; the total size is checked exactly (``InvalidInput`` with a one-line reason)."""
    what = f"KKRT message {round_no}"
    buf, total, expected, seen = bytearray(), 0, None, 0
    for piece in pieces:
        piece = as_buffer(piece, what)
        buf += piece
        total += len(piece)
        if expected is None:
            if len(buf) < HEADER_SIZE + head:
                continue
            value, _ = _open(bytes(buf[:HEADER_SIZE]), round_no)
            expected = HEADER_SIZE + head + rows_for(value) * row
            yield "head", value, bytes(buf[HEADER_SIZE:HEADER_SIZE + head])
            del buf[:HEADER_SIZE + head]
        if total > expected:
            raise InvalidInput(f"{what}: wrong size ({total - HEADER_SIZE} bytes, expected {expected - HEADER_SIZE})")
        k = len(buf) // row if total == expected else len(buf) // row // align * align
        if k:
            yield "rows", seen, np.frombuffer(bytes(buf[:k * row]), dtype=np.uint8).reshape(k, row)
            del buf[:k * row]
            seen += k
    if expected is None:
        _open(bytes(buf[:HEADER_SIZE]), round_no)          # too short / not KKRT / wrong round
        raise InvalidInput(f"{what}: wrong size ({max(total - HEADER_SIZE, 0)} bytes)")
    if total != expected:
        raise InvalidInput(f"{what}: wrong size ({total - HEADER_SIZE} bytes, expected {expected - HEADER_SIZE})")


class _Timed:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def _mark(self, name: str, t0: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0


class KkrtSender(_Timed):
    """The OPRF sender S (set Y): learns |X| only."""

    def __init__(self, ids, *, rng: Rng | None = None, domain: bytes = b"", bins: int | None = None,
                 crypto: str = "aes") -> None:
        super().__init__()
        t0 = time.perf_counter()
        self._c = profile(crypto)
        self._bins = bins                    # tests only: the receiver's forced table size
        self._rng = default_rng(rng)
        self._domain = bytes(domain)
        norm = _normalised(ids)
        self.count = len(norm)
        self._items = self._c.hash_items(norm, _item_key(self._c, self._domain))
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
        ot_size = iknp.message_size(CODE_BITS, 2)
        _size("KKRT message 2", body, ot_size + SEED)
        out = self._ot.extend(body[:ot_size])
        self._cuckoo_seed = bytes(body[ot_size:])
        self._code_seed = draw(self._rng, SEED)
        return _frame(3, 0) + out + self._code_seed

    def prepare(self) -> None:
        """What message 5 needs before message 4: the code words of Y (they need only the code
        seed), the fillers, the random order of each mask list and Y's cuckoo bins (the seed
        came in message 2). The step calls it while the receiver computes its corrections."""
        if not hasattr(self, "_code_seed"):
            raise SessionStateError("the sender prepares message 5 only after message 3")
        if getattr(self, "_code", None) is None:
            t0 = time.perf_counter()
            self._code = self._c.code_words(self._items, self._code_seed)
            n, L = self.count, mask_bytes(self.receiver_count, self.count)
            self._filler = prg(draw(self._rng, SEED), HASHES * n * L).reshape(HASHES, n, L)
            perm_src = prg(draw(self._rng, SEED), HASHES * n * 8).view("<u8").reshape(HASHES, n)
            self._pos = np.empty((HASHES, n), dtype=np.int64)
            for h in range(HASHES):
                self._pos[h, np.argsort(perm_src[h])] = np.arange(n)
            self._mark("code", t0)
            t0 = time.perf_counter()
            self._place(bin_count(self.receiver_count) if self._bins is None else self._bins)
            self._mark("cuckoo", t0)

    def masks(self, msg4) -> bytes:
        return self.masks_from([msg4])

    def masks_from(self, pieces) -> bytes:
        """Message 5 from message 4 arriving in ``pieces``: each batch of the receiver's rows u
        is evaluated on arrival; the masks go out whole, each list in one random order."""
        self._steps.enter("masks")
        self.prepare()
        expected_m = bin_count(self.receiver_count) if self._bins is None else self._bins
        ot_size = iknp.message_size(CODE_BITS, 4)

        def rows_for(m: int) -> int:
            if m != expected_m:
                raise InvalidInput(f"KKRT message 4: {m} bins, expected {expected_m}")
            return m

        for kind, first, data in _split(pieces, 4, ot_size, CODE_BYTES, rows_for, align=iknp.KAPPA):
            t0 = time.perf_counter()
            if kind == "head":
                seeds = self._ot.receive(data)
                self._key = self._c.key("pc.psi.kkrt.v1 oprf output", self._ot.derive_key(b"kkrt-oprf"))
                self._q = _RowStream(self._c, [seeds[i].tobytes() for i in range(CODE_BITS)])
                self._mark("base_ot", t0)
                continue
            q = self._q.next(data.shape[0])
            self._mark("transpose", t0)
            t0 = time.perf_counter()
            lo, hi = np.searchsorted(self._pair_blocks, [first // iknp.KAPPA, -(-(first + data.shape[0]) // iknp.KAPPA)])
            self._c.sender_masks(self._key, q, data, first, self._s, self._pair_bin[lo:hi], self._pair_item[lo:hi],
                           self._pair_out[lo:hi], self._code, self._out.reshape(HASHES * self.count, self._L), self._L)
            self._mark("oprf", t0)
        return _frame(5, self.count) + self._out.tobytes()

    def _place(self, m: int) -> None:
        """Y's bins in the receiver's table of m bins: every (item, hash) pair grouped by its
        bin, the fillers of repeated bins in place."""
        bins = cuckoo_bins(self._items, self._cuckoo_seed, m, self._c)
        n, L = self.count, mask_bytes(self.receiver_count, self.count)
        filler, pos = self._filler, self._pos
        self._filler = None
        repeated = np.zeros((n, HASHES), dtype=bool)
        repeated[:, 1] = bins[:, 1] == bins[:, 0]
        repeated[:, 2] = (bins[:, 2] == bins[:, 0]) | (bins[:, 2] == bins[:, 1])
        out = np.empty((HASHES, n, L), dtype=np.uint8)
        for h in (1, 2):
            ks = np.nonzero(repeated[:, h])[0]
            out[h, pos[h, ks]] = filler[h, ks]
        pairs = np.nonzero(~repeated.ravel())[0]
        # grouped by block of 128 bins (batches arrive in whole blocks): a stable sort of
        # 16-bit keys is numpy's linear-time radix sort
        blocks = bins.ravel()[pairs] // iknp.KAPPA
        blocks = blocks.astype(np.uint16 if m <= iknp.KAPPA << 16 else np.int64)
        order = np.argsort(blocks, kind="stable")
        pairs, self._pair_blocks = pairs[order], blocks[order].astype(np.int64)
        # gathered in pair order now, so that the evaluation reads them in sequence
        items, hs = pairs // HASHES, pairs % HASHES
        self._pair_bin = bins.ravel()[pairs]
        self._pair_item = items
        self._pair_out = hs * n + pos[hs, items]
        self._out, self._L = out, L


class KkrtReceiver(_Timed):
    """The OPRF receiver R (set X): learns X ∩ Y (and |Y|)."""

    def __init__(self, ids, *, rng: Rng | None = None, domain: bytes = b"",
                 max_rehash: int = 16, bins: int | None = None, crypto: str = "aes") -> None:
        super().__init__()
        t0 = time.perf_counter()
        self._c = profile(crypto)
        self._rng = default_rng(rng)
        self._domain = bytes(domain)
        self._ids = _normalised(ids)
        self.count = len(self._ids)
        self._items = self._c.hash_items(self._ids, _item_key(self._c, self._domain))
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
            self._items, self._m, lambda: draw(self._rng, SEED), self._max_rehash, profile=self._c)
        self._mark("cuckoo", t0)
        return _frame(2, self.count) + out + self._cuckoo_seed

    def correct(self, msg3) -> bytes:
        return b"".join(self.correct_parts(msg3))

    def correct_parts(self, msg3):
        """Message 4 in parts: its head (OT round 4, cuckoo seed), then the rows u of each
        batch of BATCH_BINS bins as soon as they are computed (the sender evaluates them on
        arrival)."""
        self._steps.enter("correct")
        t0 = time.perf_counter()
        _, body = _open(msg3, 3)
        ot_size = iknp.message_size(CODE_BITS, 3)
        _size("KKRT message 3", body, ot_size + SEED)
        k = np.frombuffer(draw(self._rng, 2 * CODE_BITS * 16), dtype=np.uint8).reshape(2, CODE_BITS, 16)
        ot4 = self._ot.send(body[:ot_size], k[0], k[1])
        code_seed = bytes(body[ot_size:])
        self._key = self._c.key("pc.psi.kkrt.v1 oprf output", self._ot.derive_key(b"kkrt-oprf"))
        self._mark("base_ot", t0)
        t0 = time.perf_counter()
        m = self._m
        self._occupied, self._placed, self._hidx = placement(self._bins, self._table)
        code = self._c.code_words(self._items[self._placed], code_seed)
        self._mark("code", t0)
        yield _frame(4, m) + ot4
        rows = _RowStream(self._c, [k[0, i].tobytes() for i in range(CODE_BITS)],
                          pair_with=[k[1, i].tobytes() for i in range(CODE_BITS)])
        self._t = np.empty((m, CODE_BYTES), dtype=np.uint8)
        for lo in range(0, m, BATCH_BINS):
            t0 = time.perf_counter()
            cnt = min(BATCH_BINS, m - lo)
            t, u = rows.next(cnt)
            self._t[lo:lo + cnt] = t
            a, b = np.searchsorted(self._occupied, [lo, lo + cnt])
            u[self._occupied[a:b] - lo] ^= code[a:b]
            self._mark("transpose", t0)
            yield memoryview(u).cast("B")

    def prepare_finish(self) -> None:
        """The receiver's own OPRF outputs, sorted for matching (the step calls it while the
        sender evaluates, before message 5 arrives)."""
        if getattr(self, "_matchers", None) is not None:
            return
        if getattr(self, "_t", None) is None:
            raise SessionStateError("the receiver prepares matching only after message 4")
        t0 = time.perf_counter()
        L = mask_bytes(self.count, self.sender_count)
        mine = self._c.receiver_masks(self._key, self._t, self._occupied, L)
        self._t = None
        self._mark("oprf", t0)
        t0 = time.perf_counter()
        self._sel = [np.nonzero(self._hidx == h)[0] for h in range(HASHES)]
        self._matchers = [RowMatcher(mine[sel]) for sel in self._sel]
        self._mark("match", t0)

    def finish(self, msg5) -> list[str]:
        return self.finish_from([msg5])

    def finish_from(self, pieces) -> list[str]:
        """X ∩ Y from message 5 arriving in ``pieces``: each batch of masks is matched on
        arrival against the list of the hash function that placed the item."""
        self._steps.enter("finish")
        self.prepare_finish()
        n_s, L = self.sender_count, mask_bytes(self.count, self.sender_count)

        def rows_for(value: int) -> int:
            if value != n_s:
                raise InvalidInput("KKRT message 5: set size differs from the one announced")
            return HASHES * n_s

        for kind, first, rows in _split(pieces, 5, 0, L, rows_for):
            t0 = time.perf_counter()
            while kind == "rows" and rows.shape[0]:
                h = first // n_s                  # the rows of list h end at (h + 1)·n_s
                take = min(rows.shape[0], (h + 1) * n_s - first)
                self._matchers[h].feed(rows[:take])
                rows, first = rows[take:], first + take
            self._mark("match", t0)
        hit = np.zeros(self.count, dtype=bool)
        for sel, matcher in zip(self._sel, self._matchers):
            hit[self._placed[sel[matcher.result()]]] = True
        return [self._ids[i] for i in np.nonzero(hit)[0]]


def warm_up() -> float:
    """Load the numba kernels with the signatures a job uses (from numba's on-disk cache, or
    compiled once after installation) by running a tiny intersection; returns its seconds.
    Node processes call it in the background at start, so no job pays it."""
    t0 = time.perf_counter()
    ids = [f"W{i:03d}" for i in range(96)]           # already in normal form
    for crypto in PROFILES:
        if intersect(ids[:64], ids[32:], crypto=crypto) != ids[32:64]:
            raise AssertionError(f"KKRT warm-up intersection is wrong ({crypto})")
    return time.perf_counter() - t0


def intersect(receiver_ids, sender_ids, *, rng: Rng | None = None, domain: bytes = b"",
              crypto: str = "aes") -> list[str]:
    """Run both parties in process (tests, local use): R's items in Y."""
    s = KkrtSender(sender_ids, rng=rng, domain=domain, crypto=crypto)
    r = KkrtReceiver(receiver_ids, rng=rng, domain=domain, crypto=crypto)
    return r.finish(s.masks(r.correct(s.extend(r.respond(s.start())))))
