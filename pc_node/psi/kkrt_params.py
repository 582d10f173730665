"""Parameters and hashing of KKRT16 PSI (see docs/psi.md, "KKRT16").

* λ = 40 statistical security, as in libOTe/libPSI and SecretFlow PSI.
* Cuckoo table: 3 hash functions, no stash, m = ⌊n · (λ + log₂ n + 256) / 240⌋ bins
  (≈ 1.3164 n at n = 2^20) — the experimentally fitted line of cryptoTools
  ``CuckooIndex::selectParams`` (a = 240, b = −log₂ n − 256, e = (λ − b)/a), which SecretFlow's
  ``CuckooIndex::SelectParams`` copies.
* Masks: ⌈(λ + log₂(n_R · n_S)) / 8⌉ bytes of the OPRF output (10 bytes at 1M × 1M), as libPSI
  ``KkrtPsiSender``/``Receiver`` and SecretFlow's ``kkrt_psi`` truncate them.
* Hashing: BLAKE3 (keyed and derive-key modes) for identifiers, cuckoo bins and OPRF outputs.
"""
from __future__ import annotations

import math

import blake3
import numpy as np

from pc_common.errors import InvalidInput

from . import kkrt_kernels as K

LAMBDA = 40
HASHES = 3
CODE_BITS = 512
CODE_BYTES = CODE_BITS // 8
ITEM_BYTES = 16
MAX_ITEMS = 1 << 32


def bin_count(n: int, lam: int = LAMBDA) -> int:
    """Cuckoo bins for ``n`` items (cryptoTools/SecretFlow formula, no stash, 3 hashes)."""
    if n <= 0:
        return 1
    return max(int(n * (lam + math.log2(n) + 256) / 240), 1)


def mask_bytes(n_receiver: int, n_sender: int, lam: int = LAMBDA) -> int:
    """Bytes kept of each OPRF output: ⌈(λ + log₂(n_R·n_S)) / 8⌉."""
    return -(-(lam + math.ceil(math.log2(max(n_receiver, 1) * max(n_sender, 1)))) // 8)


def derive_key(context: str, material: bytes) -> np.ndarray:
    """A 32-byte BLAKE3 key (derive-key mode) as the 8 little-endian words the kernels take."""
    key = blake3.blake3(material, derive_key_context=context).digest()
    return np.frombuffer(key, dtype="<u4").copy()


def hash_items(ids: list[str] | list[bytes], key_words: np.ndarray, out_len: int = ITEM_BYTES) -> np.ndarray:
    """BLAKE3-keyed(key, id)[:out_len] for every id (str: its UTF-8), (n, out_len) uint8.

    The identifiers are concatenated once (for ASCII ``str`` one join and one encode; byte
    lengths item by item otherwise) and hashed in place by the vectorised single-block kernel;
    identifiers longer than 64 bytes (rare) go through the ``blake3`` package.
    """
    n = len(ids)
    data = b""
    if n and isinstance(ids[0], str):
        joined = "".join(ids)
        data = joined.encode("utf-8")
        if len(data) != len(joined):              # non-ASCII: byte lengths differ from lengths
            ids = [s.encode("utf-8") for s in ids]
    elif n:
        data = b"".join(ids)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    short = lengths <= 64
    buf = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(1, dtype=np.uint8)
    out = K.blake3_spans(key_words, buf, starts, np.where(short, lengths, 0), out_len)
    if not short.all():
        key = key_words.astype("<u4").tobytes()
        for i in np.nonzero(~short)[0]:
            item = data[starts[i]:starts[i] + lengths[i]]
            out[i] = np.frombuffer(blake3.blake3(item, key=key).digest(out_len), dtype=np.uint8)
    return out


def cuckoo_bins(items: np.ndarray, seed: bytes, m: int, profile=None) -> np.ndarray:
    """The 3 candidate bins of each 16-byte item hash: a keyed hash (key from the cuckoo seed;
    BLAKE3, or HMAC-SM3 in the national profile) → 3 × 64 bits mod m."""
    if profile is None:
        from .kkrt_profiles import AesProfile
        profile = AesProfile()
    words = profile.cuckoo_words(items, profile.key("pc.psi.kkrt.v1 cuckoo hash", seed))
    return (words % np.uint64(m)).astype(np.int64)


def cuckoo_table(items: np.ndarray, m: int, draw_seed, max_rehash: int, max_kicks: int = 500, profile=None):
    """Insert ``items`` into m bins; on failure re-hash with a fresh seed, up to ``max_rehash``
    times. Returns (seed, bins (n, 3), table (m,) item index or −1, attempts)."""
    for attempt in range(1, max_rehash + 1):
        seed = draw_seed()
        bins = cuckoo_bins(items, seed, m, profile)
        table, ok = K.cuckoo_insert(bins, m, max_kicks, int.from_bytes(seed[:7], "little"))
        if ok:
            return seed, bins, table, attempt
    raise InvalidInput(f"cuckoo hashing failed {max_rehash} times (table of {m} bins too small?)")


def placement(bins: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occupied bins, their items and the smallest hash index that maps the item there."""
    occupied = np.nonzero(table >= 0)[0]
    items = table[occupied]
    b = bins[items]
    hidx = np.where(b[:, 0] == occupied, 0, np.where(b[:, 1] == occupied, 1, 2))
    return occupied, items, hidx


def _prefix(rows: np.ndarray) -> np.ndarray:
    p = np.zeros((rows.shape[0], 8), dtype=np.uint8)
    w = min(8, rows.shape[1])
    p[:, :w] = rows[:, :w]
    return p.view("<u8").ravel()


class RowMatcher:
    """Exact membership of arriving rows in ``mine``, batch by batch: ``feed(theirs)`` marks
    every row of ``mine`` that occurs among ``theirs``; ``result()`` the final marks.

    ``mine``'s 8-byte prefixes go once into a hash table (load ≤ 1/2); each arriving row is
    looked up and compared in full with every row of ``mine`` sharing its prefix.
    """

    def __init__(self, mine: np.ndarray) -> None:
        self._mine = np.ascontiguousarray(mine)
        self._found = np.zeros(mine.shape[0], dtype=bool)
        self._prefixes = _prefix(self._mine)
        self._bits = max(4, int(2 * max(mine.shape[0], 1) - 1).bit_length())
        self._table = K.match_table(self._prefixes, self._bits)

    def feed(self, theirs: np.ndarray) -> None:
        if self._mine.shape[0] and theirs.shape[0]:
            K.match_feed(self._table, self._bits, self._prefixes, self._mine,
                         np.ascontiguousarray(theirs), self._found)

    def result(self) -> np.ndarray:
        return self._found


def match_rows(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Exact membership: found[i] is True iff row ``mine[i]`` occurs among ``theirs`` rows."""
    matcher = RowMatcher(mine)
    matcher.feed(theirs)
    return matcher.result()
