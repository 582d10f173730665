"""Columnar at-rest layout of imported datasets: SM4-GCM-encrypted column blocks in one file.

An import writes ``DATA_DIR/datasets/<token>.pcb`` while it reads its input, then registers it
in the store (``pc_node.store``) in one SQLite transaction; until that commits, the previous
version of the dataset stays the one read, and a crash leaves only an unreferenced file that
the next store opening deletes. Rows are cut into blocks of :data:`BLOCK_ROWS`; each block has
these *parts*, each one SM4-GCM ciphertext under the node's field key (``pc_node.keystore``)
with the associated data ``pcb/<token>/<block>/<part>`` (a part moved to another place, block
or file fails to decrypt):

* ``k``: the identifiers, packed: the first 17 digits as one little-endian uint64 (the check
  character follows from them; only valid identifiers are stored);
* ``c<i>``: the dataset's column ``i`` (text, stripped) as a zstd-compressed Arrow IPC stream,
  so a step that needs one column decrypts only that column.

The blind index: HMAC-SM3 of every identifier (computed in bulk, ``pc_common.sm3_bulk``), its
first 8 bytes as a big-endian integer, sorted into ``2**bits`` buckets by its top bits with
the row numbers; the store keeps one SQLite row per bucket. A lookup reads only the buckets of
the wanted identifiers and the blocks holding candidate rows, and keeps a row only if its
decrypted identifier is the wanted one (8-byte collisions and any edit of the index are
caught there; a deleted index entry would hide a row, as a deleted row would).
"""
from __future__ import annotations

import fcntl
import json
import os
import pathlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import Sequence

import numpy as np
import pyarrow as pa

__all__ = ["BLOCK_ROWS", "BlockWriter", "BlockFile", "pack_ids", "unpack_ids", "codes_of", "bucket_bits",
           "parse_buckets", "index_values", "ids_as_text", "remove_unused", "record_json"]

BLOCK_ROWS = 65536
BUCKET_TARGET = 256                        # index entries per bucket, about
SUFFIX = ".pcb"
_WEIGHTS = np.array([pow(2, 17 - i, 11) for i in range(17)], dtype=np.int64)
_CHECK = np.frombuffer(b"10X98765432", dtype=np.uint8)
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


def codes_of(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ok): the ASCII bytes of 18-character identifiers as an (n, 18) uint8 array, and
    which of ``ids`` had that shape (the others' rows are zero)."""
    arr = np.array([s if isinstance(s, str) and len(s) == 18 and s.isascii() else "" for s in ids], dtype="S18")
    codes = arr.view(np.uint8).reshape(len(arr), 18) if len(arr) else np.zeros((0, 18), np.uint8)
    return codes, codes[:, 0] != 0 if len(arr) else np.zeros(0, bool)


def pack_ids(codes: np.ndarray) -> np.ndarray:
    """(n, 18) ASCII codes of valid identifiers → their first 17 digits as uint64."""
    x = np.zeros(len(codes), dtype=np.uint64)
    for i in range(17):                    # Horner's rule: numpy has no fast integer matmul
        x *= np.uint64(10)
        x += codes[:, i] - np.uint8(48)
    return x


def unpack_ids(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_ids`: uint64 → (n, 18) ASCII codes with the check character."""
    n = len(packed)
    digits = np.empty((n, 18), dtype=np.uint8)
    hi = (packed // np.uint64(10 ** 8)).astype(np.int64)      # 9 digits; the rest in 32-bit steps
    lo = (packed - hi.astype(np.uint64) * np.uint64(10 ** 8)).astype(np.int32)
    hi = hi.astype(np.int32)
    for i in range(16, 8, -1):
        digits[:, i] = lo % 10
        lo //= 10
    for i in range(8, -1, -1):
        digits[:, i] = hi % 10
        hi //= 10
    digits[:, 17] = _CHECK[(digits[:, :17].astype(np.int32) @ _WEIGHTS.astype(np.int32)) % 11]
    digits[:, :17] += 48
    return digits


def ids_as_text(codes: np.ndarray) -> list[str]:
    return codes.view("S18").ravel().astype("U18").tolist() if len(codes) else []


def bucket_bits(rows: int) -> int:
    return max(0, int(np.ceil(np.log2(max(1, rows) / BUCKET_TARGET))))


def index_values(digests: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 32-byte HMAC as a big-endian integer."""
    return np.ascontiguousarray(digests[:, :8]).view(">u8").ravel().astype(np.uint64)


def _aad(token: str, block: int, part: str) -> bytes:
    return f"pcb/{token}/{block}/{part}".encode()


def _column_bytes(arr: pa.Array) -> bytes:
    sink = pa.BufferOutputStream()
    batch = pa.record_batch([arr], names=["v"])
    with pa.ipc.new_stream(sink, batch.schema, options=_IPC) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _column_of(data: bytes) -> pa.Array:
    with pa.ipc.open_stream(pa.py_buffer(data)) as r:
        return r.read_all().column(0).combine_chunks()


class BlockWriter:
    """Writes one dataset version's block file; :meth:`finish` returns what the store keeps."""

    def __init__(self, directory: pathlib.Path, cipher, n_columns: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(12)
        self.path = directory / f"{self.token}{SUFFIX}"
        self._cipher = cipher
        self._n_columns = n_columns
        self._fh = open(self.path, "xb")
        fcntl.flock(self._fh, fcntl.LOCK_EX)      # in progress: the store's clean-up leaves it alone
        if os.stat(self.path).st_ino != os.fstat(self._fh.fileno()).st_ino:   # removed before the lock
            self._fh.close()
            raise OSError("block file removed while being created")
        self._pending: list[tuple[np.ndarray, list[pa.Array]]] = []
        self._pending_rows = 0
        self._blocks: list[list] = []
        self._index: list[np.ndarray] = []
        self.rows = 0
        # Blocks are hashed, compressed, encrypted and written by one worker thread (OpenSSL,
        # Arrow and the numba kernel release the GIL) while the caller reads the next batch.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcb-writer")
        self._inflight: list = []

    def add(self, codes: np.ndarray, columns: list[pa.Array]) -> None:
        """Rows: ``codes`` (n, 18) ASCII of valid normalised identifiers, one text array per column."""
        if len(columns) != self._n_columns:
            raise ValueError("one array per dataset column is needed")
        self._pending.append((codes, columns))
        self._pending_rows += len(codes)
        while self._pending_rows >= BLOCK_ROWS:
            self._flush(BLOCK_ROWS)

    def _take(self, n: int) -> tuple[np.ndarray, list[pa.Array]]:
        codes, cols, got = [], [[] for _ in range(self._n_columns)], 0
        while got < n:
            c, arrs = self._pending[0]
            k = min(n - got, len(c))
            codes.append(c[:k])
            for j, a in enumerate(arrs):
                cols[j].append(a.slice(0, k))
            if k == len(c):
                self._pending.pop(0)
            else:
                self._pending[0] = (c[k:], [a.slice(k) for a in arrs])
            got += k
        self._pending_rows -= n
        return np.concatenate(codes), [pa.concat_arrays(c) if len(c) > 1 else c[0] for c in cols]

    def _flush(self, n: int) -> None:
        codes, cols = self._take(n)
        while len(self._inflight) >= 2:        # bounded memory: at most two blocks waiting
            self._inflight.pop(0).result()
        self._inflight.append(self._pool.submit(self._write_block, codes, cols))
        self.rows += len(codes)

    def _write_block(self, codes: np.ndarray, cols: list[pa.Array]) -> None:
        block = len(self._blocks)
        parts = {}
        self._index.append(index_values(self._cipher.blind_index_rows(codes)))
        items = [("k", pack_ids(codes).astype("<u8").tobytes())]
        items += [(f"c{j}", _column_bytes(a)) for j, a in enumerate(cols)]
        for part, data in items:
            blob = self._cipher.encrypt(data, _aad(self.token, block, part))
            parts[part] = [self._fh.tell(), len(blob)]
            self._fh.write(blob)
        self._blocks.append([len(codes), parts])

    def finish(self) -> tuple[dict, list[tuple[int, bytes]]]:
        """Flush, sync the file to disk; (storage record, index buckets)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        for f in self._inflight:
            f.result()
        self._inflight = []
        self._pool.shutdown()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        bits = bucket_bits(self.rows)
        values = np.concatenate(self._index) if self._index else np.zeros(0, np.uint64)
        self._index = []
        # Sorted in few copies (peak memory: ten million rows are 80 MB a copy); rows of one
        # identifier need no order here, lookups sort their candidates by row.
        order = np.argsort(values)
        values = values[order]
        order = order.astype(np.uint32)
        starts = (np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)) if bits else np.zeros(1, np.uint64)
        edges = np.append(np.searchsorted(values, starts), len(values)).tolist()
        buckets = []
        for b in range(len(starts)):
            s, e = edges[b], edges[b + 1]
            if e > s:
                entries = np.empty(e - s, dtype=ENTRY)
                entries["h"], entries["r"] = values[s:e], order[s:e]
                buckets.append((b, entries.tobytes()))
        record = {"layout": "blocks", "file": self.path.name, "token": self.token, "block_rows": BLOCK_ROWS,
                  "bucket_bits": bits, "blocks": self._blocks}
        return record, buckets

    def release(self) -> None:
        """After the store committed the record (or gave up): unlock and close the file."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if not self._fh.closed:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()

    def abort(self) -> None:
        self.release()
        self.path.unlink(missing_ok=True)


ENTRY = np.dtype([("h", "<u8"), ("r", "<u4")])      # one blind-index entry: HMAC prefix, row


def parse_buckets(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(HMAC prefixes, rows) of the given buckets' entries, concatenated in the order given."""
    entries = np.frombuffer(b"".join(blobs), dtype=ENTRY)
    return entries["h"].astype(np.uint64), entries["r"].astype(np.int64)


class BlockFile:
    """Reads one dataset version's block file."""

    def __init__(self, directory: pathlib.Path, record: dict, cipher):
        self.record = record
        self.path = directory / record["file"]
        self._cipher = cipher
        self.block_rows = int(record["block_rows"])

    def _part(self, fd: int, block: int, part: str) -> bytes:
        off, length = self.record["blocks"][block][1][part]
        data = os.pread(fd, length, off)
        return self._cipher.decrypt(data, _aad(self.record["token"], block, part))

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY)

    def packed_keys(self, fd: int, block: int) -> np.ndarray:
        return np.frombuffer(self._part(fd, block, "k"), dtype="<u8").astype(np.uint64)

    def _map(self, fn, items):
        """``fn(fd, item)`` for every item, two at a time (OpenSSL and Arrow release the GIL)."""
        fd = self._open()
        try:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="pcb-reader") as pool:
                yield from pool.map(lambda item: fn(fd, item), items)
        finally:
            os.close(fd)

    def keys(self) -> list[str]:
        out: list[str] = []
        for codes in self._map(lambda fd, b: unpack_ids(self.packed_keys(fd, b)), range(len(self.record["blocks"]))):
            out.extend(ids_as_text(codes))
        return out

    def rows(self, rows: np.ndarray, wanted: np.ndarray, columns: Sequence[int], n_columns: int):
        """Yield (packed identifier, values) for the sorted candidate ``rows`` whose stored
        identifier equals ``wanted`` (the packed identifier each candidate is expected to have);
        values hold the listed ``columns`` (indexes) and "" for the others."""
        blocks = rows // self.block_rows
        bounds = np.flatnonzero(np.diff(blocks)) + 1
        groups = [(int(blocks[s]), s, e) for s, e in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(rows)].tolist())
                  ] if len(rows) else []

        def read(fd, group):
            b, s, e = group
            local = rows[s:e] - b * self.block_rows
            keep = self.packed_keys(fd, b)[local] == wanted[s:e]
            local = local[keep]
            if not len(local):
                return [], []
            idx = pa.array(local)
            cols = [_column_of(self._part(fd, b, f"c{j}")).take(idx).to_pylist() if j in columns
                    else repeat("", len(local)) for j in range(n_columns)]
            return wanted[s:e][keep].tolist(), [list(v) for v in zip(*cols)]

        for packed, values in self._map(read, groups):
            yield from zip(packed, values)


def remove_unused(directory: pathlib.Path, used) -> None:
    """Delete block files no dataset refers to and no writer holds (crashed or replaced imports).
    ``used()`` is the set of referenced file names, asked again once a file is locked (a writer
    may have committed it in the meantime)."""
    if not directory.is_dir():
        return
    candidates = [p for p in directory.glob(f"*{SUFFIX}") if p.name not in used()]
    for p in candidates:
        try:
            with open(p, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if p.name not in used():
                    p.unlink(missing_ok=True)
        except OSError:
            continue            # an import in progress (BlockingIOError), or gone already


def record_json(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))
