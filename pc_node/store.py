"""The node's embedded store: SQLite in the data directory, encrypted at rest.

Identifiers and row values are stored SM4-GCM-encrypted under the node's data key
(``pc_node.keystore``); identifiers also get an HMAC-SM3 blind index so rows can be
found by identifier without decrypting the table. No SQL is ever built from user
input: dataset names are validated and passed as parameters.

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

from pc_common import clock
from pc_common.errors import AlreadyExists, NotFound
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
        self._keys_cache: dict[tuple[str, int], list[str]] = {}
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

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

    def write_dataset(self, meta: DatasetMeta, rows: Iterable[tuple[str, Sequence[str]]],
                      replace: bool = False, attachment: tuple[bytes, int] | None = None) -> DatasetMeta:
        """Store a whole dataset atomically: all rows or none.

        ``rows`` yields (normalised identifier, values in ``meta.columns`` order). With
        ``attachment`` (record, row count) the dataset is attached instead: no rows here, its
        encrypted attachment record in the same transaction.
        """
        with self.transaction() as db:
            old = db.execute("SELECT id, version FROM datasets WHERE name = ?", (meta.name,)).fetchone()
            if old is not None and not replace:
                raise AlreadyExists(f"dataset '{meta.name}' already exists (use --replace to overwrite it)")
            version = 1
            if old is not None:
                version = old[1] + 1
                db.execute("DELETE FROM rows WHERE dataset_id = ?", (old[0],))
                db.execute("DELETE FROM datasets WHERE id = ?", (old[0],))
                db.execute("DELETE FROM blobs WHERE kind = ? AND name = ?", (ATTACHMENT_KIND, meta.name))
            meta.version, meta.updated_at = version, clock.iso()
            cur = db.execute(
                "INSERT INTO datasets (name, key_column, description, columns_json, rows, version, updated_at,"
                " key_json) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                (meta.name, meta.key_column, meta.description,
                 json.dumps([dataclasses.asdict(c) for c in meta.columns], ensure_ascii=False),
                 version, meta.updated_at,
                 json.dumps(dataclasses.asdict(meta.key_meta) if meta.key_meta else {}, ensure_ascii=False)))
            ds_id = cur.lastrowid
            count = 0
            batch = []
            for row_no, (key, values) in enumerate(rows):
                aad = f"{meta.name}/{row_no}".encode()
                payload = json.dumps(list(values), ensure_ascii=False, separators=(",", ":")).encode()
                batch.append((ds_id, row_no, self.cipher.blind_index(key),
                              self.cipher.encrypt(key.encode(), aad), self.cipher.encrypt(payload, aad)))
                count += 1
                if len(batch) >= 5000:
                    db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?)", batch)
                    batch.clear()
            if batch:
                db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?)", batch)
            if attachment is not None:
                record, count = attachment
                db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?)",
                           (ATTACHMENT_KIND, meta.name, clock.iso(), None,
                            self.cipher.encrypt(record, f"{ATTACHMENT_KIND}/{meta.name}".encode())))
            db.execute("UPDATE datasets SET rows = ? WHERE id = ?", (count, ds_id))
            meta.rows = count
        return meta

    def drop_dataset(self, name: str) -> None:
        with self.transaction() as db:
            ds_id = self._dataset_id(db, name)
            db.execute("DELETE FROM rows WHERE dataset_id = ?", (ds_id,))
            db.execute("DELETE FROM datasets WHERE id = ?", (ds_id,))
            db.execute("DELETE FROM blobs WHERE kind = ? AND name = ?", (ATTACHMENT_KIND, name))
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

    def keys(self, name: str) -> list[str]:
        """Every normalised identifier of a dataset (decrypted), in row order.

        Kept in memory per dataset version: PSI jobs on a large dataset should not pay the
        decryption again (memory is not "at rest"; the cache dies with the process).
        """
        meta = self.dataset(name)
        source = self.source(name)
        if source is not None:
            return source.keys()     # read anew: the table may have changed since the last job
        cache_key = (meta.name, meta.version)
        cached = self._keys_cache.get(cache_key)
        if cached is not None:
            return cached
        with self._lock:
            ds_id = self._dataset_id(self._db, name)
            rows = self._db.execute("SELECT row_no, key_enc FROM rows WHERE dataset_id = ? ORDER BY row_no",
                                    (ds_id,)).fetchall()
        keys = [k.decode() for k in self.cipher.decrypt_many([r[1] for r in rows],
                                                              [f"{meta.name}/{r[0]}".encode() for r in rows])]
        self._keys_cache.clear()   # one dataset at a time is enough
        self._keys_cache[cache_key] = keys
        return keys

    def rows_for_keys(self, name: str, keys: Sequence[str]) -> dict[str, list[list[str]]]:
        """Rows whose identifier is one of ``keys``, found through the blind index."""
        meta = self.dataset(name)
        source = self.source(name)
        if source is not None:
            return source.rows_for_keys(keys)
        by_index = {self.cipher.blind_index(k): k for k in keys}
        found: dict[str, list[list[str]]] = {}
        idx = list(by_index)
        with self._lock:
            ds_id = self._dataset_id(self._db, name)
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
