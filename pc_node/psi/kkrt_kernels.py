"""numba kernels of KKRT16 PSI: single-block BLAKE3, cuckoo insertion, OPRF row hashing.

* :func:`blake3_rows` / :func:`blake3_spans` — BLAKE3 (keyed-hash mode) of many messages of at
  most 64 bytes each (rows of a matrix / spans of one buffer), one compression per message. For a message of ≤ 64 bytes BLAKE3 is a
  single ``compress(key, block, counter=0, len, CHUNK_START|CHUNK_END|ROOT|KEYED_HASH)``, so
  this is exactly the standard function; tests compare it with the ``blake3`` package (the
  reference implementation's Rust/C code) for every length 0..64.
* :func:`cuckoo_insert` — random-walk cuckoo insertion with 3 hash functions, no stash.
* :func:`sender_masks` / :func:`receiver_masks` — the OPRF rows of KKRT16 hashed with BLAKE3.

Compiled with ``cache=True`` (first import after installation compiles them once into
``__pycache__``; see docs/psi.md for the measured cost).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

IV = np.array([0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
               0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19], dtype=np.uint32)
PERM = np.array([2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8], dtype=np.int64)
CHUNK_START, CHUNK_END, ROOT, KEYED_HASH = 1, 2, 8, 16
FLAGS_KEYED = CHUNK_START | CHUNK_END | ROOT | KEYED_HASH
M32 = np.uint64(0xFFFFFFFF)


@njit(inline="always")
def _rotr(x, n):
    return ((x >> np.uint64(n)) | (x << np.uint64(32 - n))) & M32


@njit(inline="always")
def _g(v, a, b, c, d, mx, my):
    v[a] = (v[a] + v[b] + mx) & M32
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = (v[c] + v[d]) & M32
    v[b] = _rotr(v[b] ^ v[c], 12)
    v[a] = (v[a] + v[b] + my) & M32
    v[d] = _rotr(v[d] ^ v[a], 8)
    v[c] = (v[c] + v[d]) & M32
    v[b] = _rotr(v[b] ^ v[c], 7)


@njit(cache=True)
def _compress(key, m, block_len, flags, out, out_len):
    """One BLAKE3 compression of the 16 message words ``m`` (uint64 holding uint32) under
    chaining value ``key`` (8 uint32); writes the first ``out_len`` output bytes."""
    v = np.empty(16, dtype=np.uint64)
    for i in range(8):
        v[i] = np.uint64(key[i])
        v[8 + i] = np.uint64(IV[i]) if i < 4 else np.uint64(0)
    v[14] = np.uint64(block_len)
    v[15] = np.uint64(flags)
    w = m.copy()
    t = np.empty(16, dtype=np.uint64)
    for r in range(7):
        _g(v, 0, 4, 8, 12, w[0], w[1])
        _g(v, 1, 5, 9, 13, w[2], w[3])
        _g(v, 2, 6, 10, 14, w[4], w[5])
        _g(v, 3, 7, 11, 15, w[6], w[7])
        _g(v, 0, 5, 10, 15, w[8], w[9])
        _g(v, 1, 6, 11, 12, w[10], w[11])
        _g(v, 2, 7, 8, 13, w[12], w[13])
        _g(v, 3, 4, 9, 14, w[14], w[15])
        if r < 6:
            for i in range(16):
                t[i] = w[PERM[i]]
            w[:] = t
    for b in range(out_len):
        i = b // 4
        word = v[i] ^ v[i + 8]
        out[b] = np.uint8((word >> np.uint64(8 * (b % 4))) & np.uint64(0xFF))


@njit(inline="always")
def _load(row, m):
    for i in range(16):
        m[i] = (np.uint64(row[4 * i]) | (np.uint64(row[4 * i + 1]) << np.uint64(8))
                | (np.uint64(row[4 * i + 2]) << np.uint64(16)) | (np.uint64(row[4 * i + 3]) << np.uint64(24)))


@njit(cache=True, parallel=True)
def blake3_rows(key, rows, lengths, out_len):
    """BLAKE3-keyed(key, rows[i][:lengths[i]])[:out_len] for every row (rows zero-padded to 64)."""
    n = rows.shape[0]
    out = np.empty((n, out_len), dtype=np.uint8)
    for i in prange(n):
        m = np.empty(16, dtype=np.uint64)
        _load(rows[i], m)
        _compress(key, m, lengths[i], FLAGS_KEYED, out[i], out_len)
    return out


@njit(cache=True, parallel=True)
def blake3_spans(key, buf, starts, lengths, out_len):
    """BLAKE3-keyed(key, buf[starts[i]:starts[i] + lengths[i]])[:out_len] for spans of ≤ 64
    bytes (identifiers concatenated without separators: no (n, 64) copy)."""
    n = starts.shape[0]
    out = np.empty((n, out_len), dtype=np.uint8)
    for i in prange(n):
        m = np.zeros(16, dtype=np.uint64)
        s, length = starts[i], lengths[i]
        for j in range(length):
            m[j // 4] |= np.uint64(buf[s + j]) << np.uint64(8 * (j % 4))
        _compress(key, m, length, FLAGS_KEYED, out[i], out_len)
    return out


@njit(cache=True)
def cuckoo_insert(bins, m, max_kicks, seed):
    """Place item k in one of its bins ``bins[k, 0..2]`` (values < m); random walk on conflict.

    Returns (table, ok): table[b] = item index or -1. ``ok`` is False when some item needed
    more than ``max_kicks`` evictions (the caller re-hashes with fresh seeds).
    """
    n = bins.shape[0]
    table = np.full(m, -1, dtype=np.int64)
    state = np.uint64(seed) | np.uint64(1)
    for k in range(n):
        cur = k
        placed = False
        for _ in range(max_kicks + 1):
            for h in range(3):
                b = bins[cur, h]
                if table[b] < 0:
                    table[b] = cur
                    placed = True
                    break
            if placed:
                break
            state ^= state << np.uint64(13)
            state ^= state >> np.uint64(7)
            state ^= state << np.uint64(17)
            b = bins[cur, int(state % np.uint64(3))]
            evicted = table[b]
            table[b] = cur
            cur = evicted
        if not placed:
            return table, False
    return table, True


@njit(cache=True, parallel=True)
def sender_masks(key, q, u, s, bins, code, filler, out_len):
    """KKRT16 sender: out[h, k] = BLAKE3-keyed(key, q_b ⊕ (s ∧ (u_b ⊕ C(y_k))))[:out_len] with
    b = bins[k, h], where q_b is the sender's row of bin b. A hash function whose bin repeats an
    earlier one's for the same item gets ``filler[h, k]`` (fresh random) instead."""
    n = bins.shape[0]
    out = np.empty((3, n, out_len), dtype=np.uint8)
    for k in prange(n):
        m = np.empty(16, dtype=np.uint64)
        row = np.empty(64, dtype=np.uint8)
        for h in range(3):
            b = bins[k, h]
            if (h >= 1 and b == bins[k, 0]) or (h == 2 and b == bins[k, 1]):
                out[h, k] = filler[h, k]
                continue
            for i in range(64):
                row[i] = q[b, i] ^ (s[i] & (u[b, i] ^ code[k, i]))
            _load(row, m)
            _compress(key, m, 64, FLAGS_KEYED, out[h, k], out_len)
    return out


@njit(cache=True, parallel=True)
def receiver_masks(key, t, occupied, out_len):
    """KKRT16 receiver: BLAKE3-keyed(key, t_b)[:out_len] for each occupied bin b."""
    n = occupied.shape[0]
    out = np.empty((n, out_len), dtype=np.uint8)
    for k in prange(n):
        m = np.empty(16, dtype=np.uint64)
        _load(t[occupied[k]], m)
        _compress(key, m, 64, FLAGS_KEYED, out[k], out_len)
    return out
