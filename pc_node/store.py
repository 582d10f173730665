"""The node's embedded store: SQLite in the data directory, encrypted at rest.

Identifiers and row values are stored SM4-GCM-encrypted under the node's data key
(``pc_node.keystore``); identifiers also get an HMAC-SM3 blind index so rows can be
found by identifier without decrypting the table. No SQL is ever built from user
input: dataset names are validated and passed as parameters.

Imported datasets are stored in one of two layouts, both read through the same methods:

* ``blocks`` (every import since issue 14): the rows in SM4-GCM-encrypted column blocks in a
  file beside the database (``pc_node.blocks``), the blind index in ``key_buckets`` here;
* ``cells`` (older stores): one SQLite row per record, identifier and values each SM4-GCM
  encrypted, the blind index a column. Still read as before; a re-import moves a dataset to
  ``blocks``.

A dataset may instead be *attached* (``pc node attach``): its catalog row lives here, its
attachment record (table, key, DSN reference) is an encrypted blob of kind ``attachment``, and
``keys`` / ``rows_for_keys`` read it at job time through its ``pc_node.sources.DatasetSource``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import sqlite3
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from pc_common import clock
from pc_common.errors import AlreadyExists, InvalidInput, NotFound
from pc_node import blocks, idnum
from pc_node.psi.encoding import NormalIds, normalise_ids
from pc_rules.metadata import ColumnMeta, DatasetMeta

__all__ = ["ColumnMeta", "DatasetMeta", "NodeStore", "ATTACHMENT_KIND"]

ATTACHMENT_KIND = "attachment"     # blob kind: the encrypted attachment record of a dataset

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    key_column TEXT NOT NULL,
    description TEXT NOT NULL,
    columns_json TEXT NOT NULL,
    rows INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    key_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS rows (
    dataset_id INTEGER NOT NULL,
    row_no INTEGER NOT NULL,
    key_index BLOB NOT NULL,
    key_enc BLOB NOT NULL,
    payload_enc BLOB NOT NULL,
    PRIMARY KEY (dataset_id, row_no)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_by_key ON rows (dataset_id, key_index);
CREATE TABLE IF NOT EXISTS key_buckets (
    dataset_id INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    entries BLOB NOT NULL,
    PRIMARY KEY (dataset_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, name)
);
"""


class NodeStore:
    """Datasets, subject sets, results and job working data of one node."""

    def __init__(self, path: pathlib.Path, cipher):
        self.path = pathlib.Path(path)
        self.cipher = cipher
        self._lock = threading.RLock()
        self._keys_cache: dict[tuple, Sequence[str]] = {}   # keys and subject_ids of one dataset version
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        if "storage_json" not in {r[1] for r in self._db.execute("PRAGMA table_info(datasets)")}:
            # Stores from before the block layout: their datasets are all "cells".
            self._db.execute("ALTER TABLE datasets ADD COLUMN storage_json TEXT NOT NULL DEFAULT ''")
        self.blocks_dir = self.path.parent / "datasets"
        blocks.remove_unused(self.blocks_dir, self._block_files)

    def _block_files(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT storage_json FROM datasets WHERE storage_json != ''").fetchall()
        return {json.loads(r[0])["file"] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ----- datasets -------------------------------------------------------------
    def datasets(self) -> list[DatasetMeta]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, key_column, description, columns_json, rows, version, updated_at, key_json "
                "FROM datasets ORDER BY name").fetchall()
        return [self._meta(r) for r in rows]

    @staticmethod
    def _meta(r) -> DatasetMeta:
        cols = [ColumnMeta(**c) for c in json.loads(r[3])]
        key = json.loads(r[7] or "{}")
        return DatasetMeta(name=r[0], key_column=r[1], description=r[2], columns=cols, rows=r[4], version=r[5],
                           updated_at=r[6],
                           key_meta=ColumnMeta(**key) if key else ColumnMeta(r[1], "text", "Resident identity number"))

    def dataset(self, name: str) -> DatasetMeta:
        with self._lock:
            r = self._db.execute(
                "SELECT name, key_column, description, columns_json, rows, version, updated_at, key_json "
                "FROM datasets WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"no dataset named '{name}' at this node")
        return self._meta(r)

    def _dataset_id(self, db, name: str) -> int:
        r = db.execute("SELECT id FROM datasets WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"no dataset named '{name}' at this node")
        return r[0]

    def check_new(self, name: str, replace: bool) -> None:
        """Refuse early (before a long import) what :meth:`commit_blocks` would refuse."""
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone()
        if exists and not replace:
            raise AlreadyExists(f"dataset '{name}' already exists (use --replace to overwrite it)")

    def block_writer(self, n_columns: int) -> blocks.BlockWriter:
        """A writer for a new dataset version (rows in, :meth:`commit_blocks` or ``abort`` after)."""
        return blocks.BlockWriter(self.blocks_dir, self.cipher, n_columns)

    def write_dataset(self, meta: DatasetMeta, rows: Iterable[tuple[str, Sequence[str]]],
                      replace: bool = False, attachment: tuple[bytes, int] | None = None) -> DatasetMeta:
        """Store a whole dataset atomically: all rows or none.

        ``rows`` yields (normalised identifier, values in ``meta.columns`` order). With
        ``attachment`` (record, row count) the dataset is attached instead: no rows here, its
        encrypted attachment record in the same transaction.
        """
        if attachment is not None:
            return self._commit(meta, replace, attachment=attachment)
        self.check_new(meta.name, replace)
        writer = self.block_writer(len(meta.columns))
        try:
            chunk: list[tuple[str, Sequence[str]]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= blocks.BLOCK_ROWS:
                    self._add_rows(writer, chunk, len(meta.columns))
                    chunk = []
            if chunk:
                self._add_rows(writer, chunk, len(meta.columns))
        except BaseException:
            writer.abort()
            raise
        return self.commit_blocks(meta, writer, replace)

    @staticmethod
    def _add_rows(writer: blocks.BlockWriter, chunk, n_columns: int) -> None:
        codes, shaped = blocks.codes_of([k for k, _ in chunk])
        if not (shaped.all() and idnum.valid_codes(codes).all()):
            raise InvalidInput("a stored identifier must be a valid, normalised identity number")
        columns = [pa.array([str(v[j]) for _, v in chunk], type=pa.string()) for j in range(n_columns)]
        writer.add(codes, columns)

    def commit_blocks(self, meta: DatasetMeta, writer: blocks.BlockWriter, replace: bool = False) -> DatasetMeta:
        """Make the writer's rows the dataset's current version, in one transaction; on any
        failure the file is removed and the previous version stays."""
        try:
            record, buckets = writer.finish()
            if not writer.rows:
                raise InvalidInput(f"dataset '{meta.name}': no rows to store")
            return self._commit(meta, replace, record=record, buckets=buckets, count=writer.rows)
        except BaseException:
            writer.abort()
            raise
        finally:
            writer.release()

    def _commit(self, meta: DatasetMeta, replace: bool, record: dict | None = None, buckets=(), count: int = 0,
                attachment: tuple[bytes, int] | None = None) -> DatasetMeta:
        old_file = None
        with self.transaction() as db:
            old = db.execute("SELECT id, version, storage_json FROM datasets WHERE name = ?",
                             (meta.name,)).fetchone()
            if old is not None and not replace:
                raise AlreadyExists(f"dataset '{meta.name}' already exists (use --replace to overwrite it)")
            version = 1
            if old is not None:
                version = old[1] + 1
                old_file = json.loads(old[2])["file"] if old[2] else None
                self._delete_rows(db, old[0], meta.name)
            meta.version, meta.updated_at = version, clock.iso()
            cur = db.execute(
                "INSERT INTO datasets (name, key_column, description, columns_json, rows, version, updated_at,"
                " key_json, storage_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (meta.name, meta.key_column, meta.description,
                 json.dumps([dataclasses.asdict(c) for c in meta.columns], ensure_ascii=False), count,
                 version, meta.updated_at,
                 json.dumps(dataclasses.asdict(meta.key_meta) if meta.key_meta else {}, ensure_ascii=False),
                 blocks.record_json(record) if record else ""))
            ds_id = cur.lastrowid
            db.executemany("INSERT INTO key_buckets VALUES (?, ?, ?)", ((ds_id, b, e) for b, e in buckets))
            if attachment is not None:
                blob, count = attachment
                db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?)",
                           (ATTACHMENT_KIND, meta.name, clock.iso(), None,
                            self.cipher.encrypt(blob, f"{ATTACHMENT_KIND}/{meta.name}".encode())))
                db.execute("UPDATE datasets SET rows = ? WHERE id = ?", (count, ds_id))
            meta.rows = count
        if old_file:
            (self.blocks_dir / old_file).unlink(missing_ok=True)
        return meta

    @staticmethod
    def _delete_rows(db, ds_id: int, name: str) -> None:
        db.execute("DELETE FROM rows WHERE dataset_id = ?", (ds_id,))
        db.execute("DELETE FROM key_buckets WHERE dataset_id = ?", (ds_id,))
        db.execute("DELETE FROM datasets WHERE id = ?", (ds_id,))
        db.execute("DELETE FROM blobs WHERE kind = ? AND name = ?", (ATTACHMENT_KIND, name))

    def drop_dataset(self, name: str) -> None:
        with self.transaction() as db:
            ds_id = self._dataset_id(db, name)
            storage = db.execute("SELECT storage_json FROM datasets WHERE id = ?", (ds_id,)).fetchone()[0]
            self._delete_rows(db, ds_id, name)
        if storage:
            (self.blocks_dir / json.loads(storage)["file"]).unlink(missing_ok=True)
        self._keys_cache.clear()   # a re-import under this name starts again at version 1

    def attach_dataset(self, meta: DatasetMeta, attachment: bytes, rows: int,
                       replace: bool = False) -> DatasetMeta:
        """Record an attached dataset atomically: its catalog row (no rows here) and its record."""
        return self.write_dataset(meta, (), replace=replace, attachment=(attachment, rows))

    def source(self, name: str):
        """The ``DatasetSource`` of an attached dataset, or None for one imported into this store."""
        if not self.has_blob(ATTACHMENT_KIND, name):
            return None
        from pc_node.sources import Attachment, PostgresSource
        return PostgresSource(Attachment(**json.loads(self.get_blob(ATTACHMENT_KIND, name))))

    def _storage(self, name: str) -> tuple[int, dict | None]:
        with self._lock:
            r = self._db.execute("SELECT id, storage_json FROM datasets WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"no dataset named '{name}' at this node")
        return r[0], (json.loads(r[1]) if r[1] else None)

    def _read(self, name: str, fn):
        """``fn(dataset id, block file or None for the cells layout)``; once more if a concurrent
        re-import removed the file just read about."""
        for attempt in (0, 1):
            ds_id, record = self._storage(name)
            try:
                return fn(ds_id, blocks.BlockFile(self.blocks_dir, record, self.cipher) if record else None)
            except FileNotFoundError:
                if attempt:
                    raise

    def change_stamp(self, name: str) -> tuple:
        """Changes whenever what ``keys`` / ``rows_for_keys`` read changes: for an imported dataset
        its version, for an attached table a snapshot of the table (``PostgresSource.stamp``)."""
        meta = self.dataset(name)
        source = self.source(name)
        return (meta.version, meta.updated_at) if source is None else (meta.version, *source.stamp())

    def keys(self, name: str) -> list[str]:
        """Every normalised identifier of a dataset (decrypted), in row order; kept in memory per
        version so that jobs do not pay the decryption again (the cache dies with the process)."""
        meta, source = self.dataset(name), self.source(name)
        if source is not None:
            keys = source.keys()     # read anew: the table may have changed since the last job
            self._refresh_rows(meta, len(keys))
            return keys
        return self._cached((meta.name, meta.version), lambda: self._read(
            name, lambda ds_id, bf: bf.keys() if bf else self._cell_keys(meta, ds_id)))

    def subject_ids(self, name: str) -> NormalIds:
        """The dataset's distinct normalised identifiers, in order of first row (the set a PSI
        protocol takes), kept with :meth:`keys` (an attached table's are read anew)."""
        meta = self.dataset(name)
        if self.source(name) is not None:
            return NormalIds(normalise_ids(self.keys(name)))
        return self._cached(("subjects", meta.name, meta.version), lambda: NormalIds(normalise_ids(self.keys(name))))

    def _cached(self, key: tuple, compute):
        if key not in self._keys_cache:
            found = compute()                # one dataset version at a time is enough:
            self._keys_cache = {k: v for k, v in self._keys_cache.items() if k[-2:] == key[-2:]}
            self._keys_cache[key] = found
        return self._keys_cache[key]

    def _refresh_rows(self, meta: DatasetMeta, rows: int) -> None:
        """An attached table's catalog row count follows the table (updated when it is read)."""
        if rows != meta.rows:
            with self.transaction() as db:
                db.execute("UPDATE datasets SET rows = ? WHERE name = ? AND version = ?", (rows, meta.name, meta.version))

    def _cell_keys(self, meta: DatasetMeta, ds_id: int) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT row_no, key_enc FROM rows WHERE dataset_id = ? ORDER BY row_no",
                                    (ds_id,)).fetchall()
        return [k.decode() for k in self.cipher.decrypt_many([r[1] for r in rows],
                                                             [f"{meta.name}/{r[0]}".encode() for r in rows])]

    def rows_for_keys(self, name: str, keys: Sequence[str],
                      columns: Sequence[str] | None = None) -> dict[str, list[list[str]]]:
        """Rows whose identifier is one of ``keys``, found through the blind index.

        Every row has one value per dataset column, in the dataset's order; with ``columns``
        only those are read (the others are "")."""
        meta = self.dataset(name)
        names = [c.name for c in meta.columns]
        wanted = list(range(len(names))) if columns is None else sorted({names.index(c) for c in columns
                                                                         if c in names})
        source = self.source(name)
        if source is not None:
            return source.rows_for_keys(keys, columns=None if columns is None else [names[j] for j in wanted])

        def go(ds_id, bf):
            if bf is None:
                found = self._cell_rows(meta, ds_id, keys)
                keep = set(wanted)
                return {k: [[v if j in keep else "" for j, v in enumerate(r)] for r in rs] for k, rs in found.items()}
            return self._block_rows(ds_id, bf, keys, wanted, len(names))
        return self._read(name, go)

    def _block_rows(self, ds_id: int, bf: blocks.BlockFile, keys: Sequence[str], columns: list[int],
                    n_columns: int) -> dict[str, list[list[str]]]:
        uniq = list(dict.fromkeys(keys))
        codes, shaped = blocks.codes_of(uniq)
        codes = codes[shaped & idnum.valid_codes(codes)]      # nothing else can be stored
        if not len(codes):
            return {}
        want = blocks.index_values(self.cipher.blind_index_rows(codes))
        packed = blocks.pack_ids(codes)
        bits = int(bf.record["bucket_bits"])
        tops = (want >> np.uint64(64 - bits)) if bits else np.zeros(len(want), np.uint64)
        need = np.unique(tops).tolist()
        with self._lock:
            if len(need) * 4 > (1 << bits):
                got = self._db.execute("SELECT bucket, entries FROM key_buckets WHERE dataset_id = ? ORDER BY bucket",
                                       (ds_id,)).fetchall()
            else:
                got = []
                for i in range(0, len(need), 500):
                    part = need[i:i + 500]
                    got += self._db.execute("SELECT bucket, entries FROM key_buckets WHERE dataset_id = ? AND bucket"
                                            f" IN ({','.join('?' * len(part))})", (ds_id, *part)).fetchall()
        got.sort()
        values, rows = blocks.parse_buckets([e for _, e in got])
        lo, hi = np.searchsorted(values, want, "left"), np.searchsorted(values, want, "right")
        counts = hi - lo
        owner = np.repeat(np.arange(len(want)), counts)
        # Candidate positions lo[i] .. hi[i]-1 of every wanted identifier, without a Python loop.
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        cand = rows[starts + np.arange(int(counts.sum()))]
        order = np.argsort(cand, kind="stable")
        cand, owner = cand[order], owner[order]
        text = blocks.ids_as_text(codes)
        by_packed = dict(zip(packed.tolist(), text))
        found: dict[str, list[list[str]]] = {}
        for pk, vals in bf.rows(cand, packed[owner], columns, n_columns):
            found.setdefault(by_packed[pk], []).append(vals)
        return found

    def _cell_rows(self, meta: DatasetMeta, ds_id: int, keys: Sequence[str]) -> dict[str, list[list[str]]]:
        by_index = {self.cipher.blind_index(k): k for k in keys}
        found: dict[str, list[list[str]]] = {}
        idx = list(by_index)
        with self._lock:
            for i in range(0, len(idx), 500):
                part = idx[i:i + 500]
                q = ("SELECT row_no, key_index, payload_enc FROM rows INDEXED BY rows_by_key"
                     " WHERE dataset_id = ? AND key_index IN ("
                     + ",".join("?" * len(part)) + ")")
                for row_no, kidx, payload in self._db.execute(q, (ds_id, *part)):
                    values = json.loads(self.cipher.decrypt(payload, f"{meta.name}/{row_no}".encode()))
                    found.setdefault(by_index[bytes(kidx)], []).append(values)
        return found

    # ----- opaque encrypted blobs: subject sets, results, job working data -----
    def put_blob(self, kind: str, name: str, data: bytes, expires_at: str | None = None) -> None:
        blob = self.cipher.encrypt(data, f"{kind}/{name}".encode())
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?)",
                       (kind, name, clock.iso(), expires_at, blob))

    def get_blob(self, kind: str, name: str) -> bytes:
        with self._lock:
            r = self._db.execute("SELECT data FROM blobs WHERE kind = ? AND name = ?", (kind, name)).fetchone()
        if r is None:
            raise NotFound(f"no {kind} '{name}' at this node")
        return self.cipher.decrypt(r[0], f"{kind}/{name}".encode())

    def has_blob(self, kind: str, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM blobs WHERE kind = ? AND name = ?",
                                    (kind, name)).fetchone() is not None

    def keep_blob(self, kind: str, name: str, until: str) -> bool:
        """Keep an expiring blob at least ``until`` (``clock.iso``); False if there is none."""
        with self.transaction() as db:
            db.execute("UPDATE blobs SET expires_at = ? WHERE kind = ? AND name = ? AND expires_at IS NOT NULL"
                       " AND expires_at < ?", (until, kind, name, until))
            return db.execute("SELECT 1 FROM blobs WHERE kind = ? AND name = ?", (kind, name)).fetchone() is not None

    def delete_blobs(self, kind: str, name: str | None = None) -> int:
        with self.transaction() as db:
            if name is None:
                return db.execute("DELETE FROM blobs WHERE kind = ?", (kind,)).rowcount
            return db.execute("DELETE FROM blobs WHERE kind = ? AND name = ?", (kind, name)).rowcount

    def expire_blobs(self, now: str | None = None) -> list[tuple[str, str]]:
        now = now or clock.iso()
        with self.transaction() as db:
            gone = db.execute("SELECT kind, name FROM blobs WHERE expires_at IS NOT NULL AND expires_at <= ?",
                              (now,)).fetchall()
            db.execute("DELETE FROM blobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        return [tuple(g) for g in gone]
