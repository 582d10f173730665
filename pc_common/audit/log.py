"""The audit log itself: append-only, hash-chained entries and SM2-signed checkpoints in one
SQLite file, with retention purges and JSON-lines export (see ``chain`` for the format and
``verification`` for the checks)."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pc_common.audit.chain import (DEFAULT_RETENTION_DAYS, ENTRY_COLUMNS, EXPORT_FORMAT, FORMAT, GENESIS_HASH,
                                   MAX_DETAIL, MAX_TEXT, SCHEMA, TEXT_FIELDS, assert_no_personal_data,
                                   canonical_json, checkpoint_payload, entry_hash, load_counts, utc_iso)
from pc_common.audit.verification import VerifyReport, as_key_list, verify_records
from pc_common.errors import FailedPrecondition, InvalidInput, NotFound
from pc_common.gm import Sm2PrivateKey, Sm2PublicKey


class AuditLog:
    """Append-only, hash-chained, SM2-checkpointed audit log in one SQLite file.

    Thread-safe: one connection behind a lock, and each append is its own
    ``BEGIN IMMEDIATE`` transaction, so several processes may share the file too.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        actor_id: str,
        signer: Sm2PrivateKey | None = None,
        checkpoint_every: int = 100,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not isinstance(actor_id, str) or not actor_id or len(actor_id) > MAX_TEXT:
            raise InvalidInput("audit actor id must be non-empty text of at most 200 characters")
        assert_no_personal_data(actor_id)
        if checkpoint_every is not None and checkpoint_every < 0:
            raise InvalidInput("checkpoint_every must be positive (or 0 to disable)")
        self.path = Path(path)
        self.actor_id = actor_id
        self._signer = signer
        self._every = checkpoint_every or 0
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM audit_meta WHERE key='actor'").fetchone()
                if row is None:
                    self._db.executemany(
                        "INSERT INTO audit_meta(key, value) VALUES (?, ?)",
                        [("actor", actor_id), ("format", FORMAT)],
                    )
                elif row["value"] != actor_id:
                    raise FailedPrecondition("this audit log belongs to another actor")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._db.close()
                raise

    @classmethod
    def open_existing(cls, path: str | os.PathLike, signer: Sm2PrivateKey | None = None, **kwargs: Any) -> "AuditLog":
        """Open a log that already exists, taking the actor from the file (for ``pc audit``)."""
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"no audit log at {path}")
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT value FROM audit_meta WHERE key='actor'").fetchone()
            finally:
                db.close()
        except sqlite3.DatabaseError:
            row = None
        if row is None:
            raise FailedPrecondition(f"{path} is not an audit log")
        return cls(path, row[0], signer, **kwargs)

    # -- lifecycle
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing
    def append(
        self,
        action: str,
        *,
        job: str | None = None,
        dataset: str | None = None,
        requester: str | None = None,
        purpose: str | None = None,
        counts: Mapping[str, int] | None = None,
        detail: str | None = None,
        outcome: str = "ok",
    ) -> dict[str, Any]:
        """Record one event and return the stored entry (with ``prev_hash`` and ``hash``)."""
        fields = {"action": action, "job": job, "dataset": dataset, "requester": requester,
                  "purpose": purpose, "detail": detail, "outcome": outcome}
        for name in TEXT_FIELDS:
            value = fields[name]
            if value is None:
                if name in ("action", "outcome"):
                    raise InvalidInput(f"audit field {name} is required")
                continue
            limit = MAX_DETAIL if name == "detail" else MAX_TEXT
            if not isinstance(value, str) or (name in ("action", "outcome") and not value) or len(value) > limit:
                raise InvalidInput(f"audit field {name} must be text of at most {limit} characters")
            assert_no_personal_data(value)
        counts_json = None
        if counts is not None:
            if not isinstance(counts, Mapping):
                raise InvalidInput("audit counts must map names to integers")
            for k, v in counts.items():
                if not isinstance(k, str) or not k or len(k) > MAX_TEXT:
                    raise InvalidInput("audit count names must be short text")
                if isinstance(v, bool) or not isinstance(v, int):
                    raise InvalidInput("audit counts must be integers")
                assert_no_personal_data(k)
            counts_json = canonical_json(dict(counts)).decode("utf-8")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                entry = self._append_locked(fields, counts_json)
                if self._signer is not None and self._every and entry["seq"] % self._every == 0:
                    self._insert_signed("checkpoint", entry["seq"], entry["hash"])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return entry

    def _head_locked(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            return row["seq"], row["hash"]
        row = self._db.execute(
            "SELECT seq, head FROM audit_checkpoints WHERE kind='retention' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            return row["seq"], row["head"]
        return 0, GENESIS_HASH.hex()

    def _append_locked(self, fields: Mapping[str, str | None], counts_json: str | None) -> dict[str, Any]:
        seq, prev = self._head_locked()
        entry: dict[str, Any] = {
            "seq": seq + 1,
            "time": utc_iso(self._clock()),
            "actor": self.actor_id,
            "counts": json.loads(counts_json) if counts_json is not None else None,
            **fields,
        }
        entry["prev_hash"] = prev
        entry["hash"] = entry_hash(entry, bytes.fromhex(prev)).hex()
        row = dict(entry, counts=counts_json)
        self._db.execute(
            f"INSERT INTO audit_log({', '.join(ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})",
            [row[c] for c in ENTRY_COLUMNS],
        )
        return entry

    def _insert_signed(self, kind: str, seq: int, head: str) -> dict[str, Any]:
        assert self._signer is not None
        cp = {"kind": kind, "seq": seq, "head": head, "time": utc_iso(self._clock()),
              "actor": self.actor_id, "public_key": self._signer.public_key().to_hex()}
        cp["signature"] = self._signer.sign(checkpoint_payload(cp)).hex()
        self._db.execute(
            "INSERT INTO audit_checkpoints(kind, seq, head, time, actor, public_key, signature)"
            " VALUES (:kind, :seq, :head, :time, :actor, :public_key, :signature)",
            cp,
        )
        return cp

    def checkpoint(self) -> dict[str, Any] | None:
        """Sign the current head now (None if the log is empty or the head is already signed)."""
        if self._signer is None:
            raise FailedPrecondition("this audit log has no signing key")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq, head = self._head_locked()
                done = self._db.execute(
                    "SELECT 1 FROM audit_checkpoints WHERE kind='checkpoint' AND seq=? AND head=?",
                    (seq, head),
                ).fetchone()
                cp = None if seq == 0 or done else self._insert_signed("checkpoint", seq, head)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return cp

    def purge_older_than(self, days: int = DEFAULT_RETENTION_DAYS, *, force: bool = False) -> int:
        """Delete entries older than ``days`` and leave a signed retention anchor; returns how
        many were deleted. The purge itself is recorded as an ``audit.retention`` entry."""
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise InvalidInput("retention must be a whole number of days")
        if days < DEFAULT_RETENTION_DAYS and not force:
            raise InvalidInput(
                f"audit retention shorter than {DEFAULT_RETENTION_DAYS} days needs force=True"
            )
        if self._signer is None:
            raise FailedPrecondition("purging the audit log needs a signing key for the retention anchor")
        cutoff = utc_iso(self._clock() - timedelta(days=days))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                first_kept = self._db.execute(
                    "SELECT MIN(seq) FROM audit_log WHERE time >= ?", (cutoff,)
                ).fetchone()[0]
                if first_kept is None:
                    last = self._db.execute("SELECT MAX(seq) FROM audit_log").fetchone()[0]
                else:
                    last = self._db.execute(
                        "SELECT MAX(seq) FROM audit_log WHERE seq < ?", (first_kept,)
                    ).fetchone()[0]
                if last is None:
                    self._db.execute("COMMIT")
                    return 0
                row = self._db.execute(
                    "SELECT hash, (SELECT COUNT(*) FROM audit_log WHERE seq <= ?) AS n"
                    " FROM audit_log WHERE seq = ?", (last, last)
                ).fetchone()
                purged = row["n"]
                entry = self._append_locked(
                    {"action": "audit.retention", "job": None, "dataset": None, "requester": None,
                     "purpose": "retention", "detail": f"entries older than {days} days purged",
                     "outcome": "ok"},
                    canonical_json({"purged": purged, "last_purged_seq": last}).decode(),
                )
                self._insert_signed("retention", last, row["hash"])
                self._db.execute("DELETE FROM audit_log WHERE seq <= ?", (last,))
                self._db.execute(
                    "DELETE FROM audit_checkpoints WHERE seq <= ? AND NOT (kind='retention' AND seq=?)",
                    (last, last),
                )
                self._insert_signed("checkpoint", entry["seq"], entry["hash"])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return purged

    # -- reading
    def _rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self._lock:
            entries = [dict(r) for r in self._db.execute(
                f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_log ORDER BY seq")]
            cps = [dict(r) for r in self._db.execute(
                "SELECT kind, seq, head, time, actor, public_key, signature FROM audit_checkpoints"
                " ORDER BY seq, id")]
        for e in entries:
            e["counts"] = load_counts(e["counts"])
        return entries, cps

    def entries(self, *, job: str | None = None, since_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored entries in order (optionally one job's), as returned by :meth:`append`."""
        sql = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_log WHERE seq > ?"
        args: list[Any] = [since_seq]
        if job is not None:
            sql += " AND job = ?"
            args.append(job)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = [dict(r) for r in self._db.execute(sql, args)]
        for r in rows:
            r["counts"] = load_counts(r["counts"])
        return rows

    def head(self) -> tuple[int, str]:
        """``(seq, hex hash)`` of the newest entry; ``(0, zeros)`` for an empty log."""
        with self._lock:
            return self._head_locked()

    def verify(
        self,
        public_key: Sm2PublicKey | Iterable[Sm2PublicKey] | None = None,
        *,
        all_signatures: bool = True,
    ) -> VerifyReport:
        """Check the chain and the signed checkpoints. Signatures are checked against
        ``public_key`` (one key or several, e.g. across a key rotation), else this log's signer;
        without either, against the keys stored in the log (``key_trusted=False``)."""
        trusted = as_key_list(public_key)
        if trusted is None and self._signer is not None:
            trusted = [self._signer.public_key()]
        entries, cps = self._rows()
        return verify_records(entries, cps, self.actor_id, trusted, all_signatures)

    # -- export
    def export(self, path: str | os.PathLike) -> int:
        """Write a self-contained JSON-lines copy (header, checkpoints, entries); returns the
        number of entries. The head is checkpointed first when this log can sign."""
        if self._signer is not None:
            self.checkpoint()
        entries, cps = self._rows()
        keys = sorted({cp["public_key"] for cp in cps})
        header = {"type": "header", "format": EXPORT_FORMAT, "actor": self.actor_id,
                  "exported_at": utc_iso(self._clock()), "entries": len(entries),
                  "public_keys": keys}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(canonical_json(header).decode() + "\n")
            for cp in cps:
                f.write(canonical_json({"type": "checkpoint", **cp}).decode() + "\n")
            for e in entries:
                f.write(canonical_json({"type": "entry", **e}).decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return len(entries)

