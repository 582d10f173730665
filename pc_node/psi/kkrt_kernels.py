"""numba kernels of KKRT16 PSI: single-block BLAKE3, cuckoo insertion, OPRF row hashing.

* :func:`blake3_rows` / :func:`blake3_spans` — BLAKE3 (keyed-hash mode) of many messages of at
  most 64 bytes each (rows of a matrix / spans of one buffer), one compression per message. For a message of ≤ 64 bytes BLAKE3 is a
  single ``compress(key, block, counter=0, len, CHUNK_START|CHUNK_END|ROOT|KEYED_HASH)``, so
  this is exactly the standard function; tests compare it with the ``blake3`` package (the
  reference implementation's Rust/C code) for every length 0..64.
* :func:`cuckoo_insert` — random-walk cuckoo insertion with 3 hash functions, no stash.
* :func:`sender_masks` / :func:`receiver_masks` — the OPRF rows of KKRT16 hashed with BLAKE3
  (the sender's batch by batch, as the receiver's correction rows arrive).
* :func:`match_table` / :func:`match_feed` — exact membership of the sender's masks among the
  receiver's, through a hash table of 8-byte prefixes (≈ 6× numpy's sort and searchsorted).

The compression keeps state and message words in scalars (≈ 25 % faster than 16-word arrays
here); every kernel is ``nogil`` so a step thread can run it while gRPC threads move bytes.

Compiled with ``cache=True`` (first import after installation compiles them once into
``__pycache__``; see docs/psi.md for the measured cost).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

IV = np.array([0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
               0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19], dtype=np.uint32)
CHUNK_START, CHUNK_END, ROOT, KEYED_HASH = 1, 2, 8, 16
FLAGS_KEYED = CHUNK_START | CHUNK_END | ROOT | KEYED_HASH


PARALLEL_GRAIN = 4096          # items per parallel task (scratch arrays allocated once per task)


@njit(inline="always")
def _u(x):
    return np.uint32(x)


@njit(inline="always")
def _r(x, n):
    x = np.uint32(x)
    return np.uint32((x >> np.uint32(n)) | (x << np.uint32(32 - n)))


@njit(inline="always")
def _w(row, i):
    return (np.uint32(row[i]) | (np.uint32(row[i + 1]) << np.uint32(8))
            | (np.uint32(row[i + 2]) << np.uint32(16)) | (np.uint32(row[i + 3]) << np.uint32(24)))


@njit(cache=True)
def _compress(key, row, block_len, flags, out, out_len):
    """One BLAKE3 compression of the 64-byte block ``row`` (zero-padded) under chaining value
    ``key`` (8 uint32); writes the first ``out_len`` output bytes. State and message live in
    scalars (registers); the 7 rounds are a loop, the message permutation a tuple assignment
    (fully unrolled rounds took minutes to compile)."""
    m0 = _w(row, 0)
    m1 = _w(row, 4)
    m2 = _w(row, 8)
    m3 = _w(row, 12)
    m4 = _w(row, 16)
    m5 = _w(row, 20)
    m6 = _w(row, 24)
    m7 = _w(row, 28)
    m8 = _w(row, 32)
    m9 = _w(row, 36)
    m10 = _w(row, 40)
    m11 = _w(row, 44)
    m12 = _w(row, 48)
    m13 = _w(row, 52)
    m14 = _w(row, 56)
    m15 = _w(row, 60)
    v0, v1, v2, v3, v4, v5, v6, v7 = key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]
    v8, v9, v10, v11 = _u(IV[0]), _u(IV[1]), _u(IV[2]), _u(IV[3])
    v12, v13, v14, v15 = _u(0), _u(0), _u(block_len), _u(flags)
    for _ in range(7):
        v0 = _u(v0 + v4 + m0); v12 = _r(v12 ^ v0, 16); v8 = _u(v8 + v12); v4 = _r(v4 ^ v8, 12)
        v0 = _u(v0 + v4 + m1); v12 = _r(v12 ^ v0, 8); v8 = _u(v8 + v12); v4 = _r(v4 ^ v8, 7)
        v1 = _u(v1 + v5 + m2); v13 = _r(v13 ^ v1, 16); v9 = _u(v9 + v13); v5 = _r(v5 ^ v9, 12)
        v1 = _u(v1 + v5 + m3); v13 = _r(v13 ^ v1, 8); v9 = _u(v9 + v13); v5 = _r(v5 ^ v9, 7)
        v2 = _u(v2 + v6 + m4); v14 = _r(v14 ^ v2, 16); v10 = _u(v10 + v14); v6 = _r(v6 ^ v10, 12)
        v2 = _u(v2 + v6 + m5); v14 = _r(v14 ^ v2, 8); v10 = _u(v10 + v14); v6 = _r(v6 ^ v10, 7)
        v3 = _u(v3 + v7 + m6); v15 = _r(v15 ^ v3, 16); v11 = _u(v11 + v15); v7 = _r(v7 ^ v11, 12)
        v3 = _u(v3 + v7 + m7); v15 = _r(v15 ^ v3, 8); v11 = _u(v11 + v15); v7 = _r(v7 ^ v11, 7)
        v0 = _u(v0 + v5 + m8); v15 = _r(v15 ^ v0, 16); v10 = _u(v10 + v15); v5 = _r(v5 ^ v10, 12)
        v0 = _u(v0 + v5 + m9); v15 = _r(v15 ^ v0, 8); v10 = _u(v10 + v15); v5 = _r(v5 ^ v10, 7)
        v1 = _u(v1 + v6 + m10); v12 = _r(v12 ^ v1, 16); v11 = _u(v11 + v12); v6 = _r(v6 ^ v11, 12)
        v1 = _u(v1 + v6 + m11); v12 = _r(v12 ^ v1, 8); v11 = _u(v11 + v12); v6 = _r(v6 ^ v11, 7)
        v2 = _u(v2 + v7 + m12); v13 = _r(v13 ^ v2, 16); v8 = _u(v8 + v13); v7 = _r(v7 ^ v8, 12)
        v2 = _u(v2 + v7 + m13); v13 = _r(v13 ^ v2, 8); v8 = _u(v8 + v13); v7 = _r(v7 ^ v8, 7)
        v3 = _u(v3 + v4 + m14); v14 = _r(v14 ^ v3, 16); v9 = _u(v9 + v14); v4 = _r(v4 ^ v9, 12)
        v3 = _u(v3 + v4 + m15); v14 = _r(v14 ^ v3, 8); v9 = _u(v9 + v14); v4 = _r(v4 ^ v9, 7)
        (m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15) = (m2, m6, m3, m10, m7, m0, m4, m13, m1, m11, m12, m5, m9, m14, m15, m8)
    w = (v0 ^ v8, v1 ^ v9, v2 ^ v10, v3 ^ v11, v4 ^ v12, v5 ^ v13, v6 ^ v14, v7 ^ v15)
    for b in range(out_len):
        out[b] = np.uint8((w[b >> 2] >> np.uint32(8 * (b & 3))) & np.uint32(0xFF))


@njit(cache=True, parallel=True, nogil=True)
def blake3_rows(key, rows, lengths, out_len):
    """BLAKE3-keyed(key, rows[i][:lengths[i]])[:out_len] for every row (rows zero-padded to 64)."""
    n = rows.shape[0]
    out = np.empty((n, out_len), dtype=np.uint8)
    for t in prange((n + PARALLEL_GRAIN - 1) // PARALLEL_GRAIN):
        for i in range(t * PARALLEL_GRAIN, min(n, (t + 1) * PARALLEL_GRAIN)):
            _compress(key, rows[i], lengths[i], FLAGS_KEYED, out[i], out_len)
    return out


@njit(cache=True, parallel=True, nogil=True)
def blake3_spans(key, buf, starts, lengths, out_len):
    """BLAKE3-keyed(key, buf[starts[i]:starts[i] + lengths[i]])[:out_len] for spans of ≤ 64
    bytes (identifiers concatenated without separators: no (n, 64) copy)."""
    n = starts.shape[0]
    out = np.empty((n, out_len), dtype=np.uint8)
    for t in prange((n + PARALLEL_GRAIN - 1) // PARALLEL_GRAIN):
        row = np.empty(64, dtype=np.uint8)
        for i in range(t * PARALLEL_GRAIN, min(n, (t + 1) * PARALLEL_GRAIN)):
            s, length = starts[i], lengths[i]
            row[:length] = buf[s:s + length]
            row[length:] = 0
            _compress(key, row, length, FLAGS_KEYED, out[i], out_len)
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


@njit(cache=True, parallel=True, nogil=True)
def sender_masks(key, q, u, lo, s, pair_bin, pair_item, pair_out, code, out, out_len):
    """KKRT16 sender, one batch of bins [lo, lo + len(q)): for every (item k, hash h) pair j
    whose bin b = pair_bin[j] lies in the batch (k = pair_item[j]), out[pair_out[j]] =
    BLAKE3-keyed(key, q_b ⊕ (s ∧ (u_b ⊕ C(y_k))))[:out_len], q_b and u_b the batch's rows of b.
    ``pair_out`` is row h·n + (the sender's random position of k in list h) of ``out``; the
    pairs' bins, items and positions are gathered in pair order beforehand, so that a pair
    reads only its code word at random (fillers of repeated bins are written by the caller)."""
    n = pair_bin.shape[0]
    for t in prange((n + PARALLEL_GRAIN - 1) // PARALLEL_GRAIN):
        row = np.empty(64, dtype=np.uint8)
        for j in range(t * PARALLEL_GRAIN, min(n, (t + 1) * PARALLEL_GRAIN)):
            b = pair_bin[j] - lo
            k = pair_item[j]
            for i in range(64):
                row[i] = q[b, i] ^ (s[i] & (u[b, i] ^ code[k, i]))
            _compress(key, row, 64, FLAGS_KEYED, out[pair_out[j]], out_len)


@njit(inline="always")
def _slot(prefix, bits):
    return np.int64((prefix * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))


@njit(cache=True, nogil=True)
def match_table(prefixes, bits):
    """An open-addressing table (linear probing, 2^bits slots, entry = index + 1) of the 8-byte
    row prefixes of one side, duplicates kept."""
    table = np.zeros(1 << bits, dtype=np.int32)
    mask = (1 << bits) - 1
    for i in range(prefixes.shape[0]):
        at = _slot(prefixes[i], bits)
        while table[at]:
            at = (at + 1) & mask
        table[at] = i + 1
    return table


@njit(cache=True, nogil=True)
def match_feed(table, bits, prefixes, mine, theirs, found):
    """Marks found[i] for every row mine[i] equal to some row of ``theirs`` (every entry with
    the same prefix is compared in full, so the result is exact)."""
    mask = (1 << bits) - 1
    width = mine.shape[1]
    for r in range(theirs.shape[0]):
        p = np.uint64(0)
        for c in range(min(8, width)):
            p |= np.uint64(theirs[r, c]) << np.uint64(8 * c)
        at = _slot(p, bits)
        while table[at]:
            i = table[at] - 1
            if prefixes[i] == p:
                same = True
                for c in range(width):
                    if mine[i, c] != theirs[r, c]:
                        same = False
                        break
                if same:
                    found[i] = True
            at = (at + 1) & mask


@njit(cache=True, parallel=True, nogil=True)
def receiver_masks(key, t, occupied, out_len):
    """KKRT16 receiver: BLAKE3-keyed(key, t_b)[:out_len] for each occupied bin b."""
    n = occupied.shape[0]
    out = np.empty((n, out_len), dtype=np.uint8)
    for c in prange((n + PARALLEL_GRAIN - 1) // PARALLEL_GRAIN):
        for k in range(c * PARALLEL_GRAIN, min(n, (c + 1) * PARALLEL_GRAIN)):
            _compress(key, t[occupied[k]], 64, FLAGS_KEYED, out[k], out_len)
    return out
