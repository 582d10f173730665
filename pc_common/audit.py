"""Tamper-evident audit log (全程留痕, 可追溯, 抗抵赖) on SQLite.

Each entry is stored as columns and hashed as canonical JSON (sorted keys, no spaces, UTF-8)::

    hash_n = SM3(canonical(entry_n) || hash_{n-1}),    hash_0 = 32 zero bytes

Every ``checkpoint_every`` entries (and on :meth:`AuditLog.checkpoint`) the head ``(seq, hash)``
is signed with the node's SM2 key and stored in a second table. :meth:`AuditLog.verify` then
detects an edited, deleted, inserted or reordered entry anywhere, and truncation of signed
entries. What it cannot detect on its own: removal of the *unsigned* tail after the latest
checkpoint, or replacement of the whole file; compare with an exported copy for those (an
export is always sealed by a fresh checkpoint). Retention purges leave a signed anchor holding
the hash of the last purged entry, so the remaining chain still verifies.

Entries must never hold raw personal data: every text field passes
:func:`assert_no_personal_data`.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pc_common.errors import CryptoError, FailedPrecondition, IntegrityError, InvalidInput, NotFound
from pc_common.gm import Sm2PrivateKey, Sm2PublicKey, sm3

__all__ = [
    "AuditLog",
    "VerifyReport",
    "verify_export",
    "assert_no_personal_data",
    "canonical_json",
    "DEFAULT_RETENTION_DAYS",
]

DEFAULT_RETENTION_DAYS = 180
GENESIS_HASH = bytes(32)
_FORMAT = "pc-audit-v1"
_EXPORT_FORMAT = "pc-audit-export-v1"
_MAX_TEXT = 200
_MAX_DETAIL = 2000
_MAX_PROBLEMS = 50
_TEXT_FIELDS = ("action", "job", "dataset", "requester", "purpose", "detail", "outcome")
_ENTRY_COLUMNS = ("seq", "time", "actor", "action", "job", "dataset", "requester", "purpose",
                  "counts", "detail", "outcome", "prev_hash", "hash")

# An 18-character identity number, plain or grouped 6-8-4, and a mainland mobile number.
_PERSONAL_PATTERNS = (
    re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])"),
    re.compile(r"(?<![0-9])[0-9]{6}[\s\-][0-9]{8}[\s\-][0-9]{3}[0-9Xx](?![0-9])"),
    re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    time      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    job       TEXT,
    dataset   TEXT,
    requester TEXT,
    purpose   TEXT,
    counts    TEXT,
    detail    TEXT,
    outcome   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_job ON audit_log(job);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,          -- 'checkpoint' or 'retention'
    seq        INTEGER NOT NULL,
    head       TEXT NOT NULL,          -- hex hash of entry seq
    time       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    public_key TEXT NOT NULL,          -- hex SM2 public key of the signer
    signature  TEXT NOT NULL           -- hex SM2 signature of the canonical payload
);
"""


# --------------------------------------------------------------------------- helpers
def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8 (not ASCII-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def assert_no_personal_data(text: str | None) -> None:
    """Raise InvalidInput if ``text`` looks like it holds an identity or mobile number."""
    if text is None:
        return
    if not isinstance(text, str):
        raise InvalidInput("audit fields must be text")
    for pattern in _PERSONAL_PATTERNS:
        if pattern.search(text):
            raise InvalidInput(
                "audit entries must not contain personal data (an identity or phone number was found)"
            )


def _utc_iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entry_payload(e: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of an entry (everything but prev_hash/hash)."""
    return {k: e.get(k) for k in _ENTRY_COLUMNS[:-2]}


def _entry_hash(e: Mapping[str, Any], prev_hash: bytes) -> bytes:
    return sm3(canonical_json(_entry_payload(e)) + prev_hash)


def _checkpoint_payload(cp: Mapping[str, Any]) -> bytes:
    return canonical_json({
        "format": _FORMAT,
        "kind": cp["kind"],
        "seq": cp["seq"],
        "head": cp["head"],
        "time": cp["time"],
        "actor": cp["actor"],
    })


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    problems: list[str] = field(default_factory=list)
    checkpoints: int = 0
    key_trusted: bool = False  # False: signatures were checked only against keys the log names

    def __bool__(self) -> bool:
        return self.ok


def _verify_records(
    entries: list[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    actor: str | None,
    trusted: list[Sm2PublicKey] | None,
    all_signatures: bool = True,
) -> VerifyReport:
    problems: list[str] = []
    add = problems.append

    # 1. signatures of checkpoints and retention anchors
    valid: list[dict[str, Any]] = []
    latest = {
        kind: max((cp["seq"] for cp in checkpoints
                   if cp.get("kind") == kind and isinstance(cp.get("seq"), int)), default=None)
        for kind in ("checkpoint", "retention")
    }
    for cp in checkpoints:
        kind = cp.get("kind") if cp.get("kind") in ("checkpoint", "retention") else "checkpoint"
        seq = cp.get("seq") if isinstance(cp.get("seq"), int) else "?"
        label = f"{kind} at seq {seq}"
        try:
            if cp["kind"] not in ("checkpoint", "retention") or not isinstance(cp["seq"], int):
                raise ValueError
            key = Sm2PublicKey.from_hex(cp["public_key"])
            sig = bytes.fromhex(cp["signature"])
            bytes.fromhex(cp["head"])
        except (KeyError, TypeError, ValueError, CryptoError):
            add(f"{label} is unreadable")
            continue
        if trusted is not None and key not in trusted:
            add(f"{label} is signed by an untrusted key")
            continue
        if actor is not None and cp["actor"] != actor:
            add(f"{label} belongs to another actor")
            continue
        if all_signatures or cp["seq"] == latest[cp["kind"]]:
            try:
                key.verify(_checkpoint_payload(cp), sig)
            except IntegrityError:
                add(f"{label} has an invalid signature")
                continue
        valid.append(cp)

    anchors = [cp for cp in valid if cp["kind"] == "retention"]
    anchor = max(anchors, key=lambda cp: cp["seq"]) if anchors else None
    first_seq = anchor["seq"] + 1 if anchor else 1
    prev_seq, prev_hash = first_seq - 1, (anchor["head"] if anchor else GENESIS_HASH.hex())

    # 2. the chain
    hashes: dict[int, str] = {}
    for e in entries:
        seq = e.get("seq")
        if not isinstance(seq, int):
            add("an entry without a valid sequence number")
            continue
        if seq > prev_seq + 1:
            add(f"entries {prev_seq + 1}..{seq - 1} are missing")
        elif seq <= prev_seq:
            add(f"entry {seq} is out of order or duplicated")
        try:
            stored_prev = bytes.fromhex(e["prev_hash"])
            computed = _entry_hash(e, stored_prev).hex()
            stored = e["hash"]
        except (KeyError, TypeError, ValueError):
            add(f"entry {seq} is unreadable")
            prev_seq = max(prev_seq, seq)
            continue
        if e["prev_hash"] != prev_hash:
            add(f"chain is broken before entry {seq}")
        if computed != stored:
            add(f"entry {seq} has been altered")
        elif actor is not None and e.get("actor") != actor:
            add(f"entry {seq} belongs to another actor")
        hashes[seq] = stored
        prev_seq, prev_hash = max(prev_seq, seq), stored

    # 3. checkpoints against the chain
    last_seq = max(hashes) if hashes else first_seq - 1
    for cp in valid:
        if cp["kind"] != "checkpoint" or cp["seq"] < first_seq:
            continue
        seq = cp["seq"]
        if seq not in hashes:
            if seq > last_seq:
                add(f"log truncated: signed checkpoint at seq {seq} is beyond the last entry {last_seq}")
            else:
                add(f"entry {seq} named by a signed checkpoint is missing")
        elif hashes[seq] != cp["head"]:
            add(f"entry {seq} does not match its signed checkpoint")

    if len(problems) > _MAX_PROBLEMS:
        problems[_MAX_PROBLEMS:] = [f"... and {len(problems) - _MAX_PROBLEMS} more problems"]
    return VerifyReport(
        ok=not problems,
        entries=len(entries),
        problems=problems,
        checkpoints=len(valid),
        key_trusted=trusted is not None,
    )


def _as_key_list(keys: Sm2PublicKey | Iterable[Sm2PublicKey] | None) -> list[Sm2PublicKey] | None:
    if keys is None:
        return None
    if isinstance(keys, Sm2PublicKey):
        return [keys]
    return list(keys)


# --------------------------------------------------------------------------- the log
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
        if not isinstance(actor_id, str) or not actor_id or len(actor_id) > _MAX_TEXT:
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
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM audit_meta WHERE key='actor'").fetchone()
                if row is None:
                    self._db.executemany(
                        "INSERT INTO audit_meta(key, value) VALUES (?, ?)",
                        [("actor", actor_id), ("format", _FORMAT)],
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
        for name in _TEXT_FIELDS:
            value = fields[name]
            if value is None:
                if name in ("action", "outcome"):
                    raise InvalidInput(f"audit field {name} is required")
                continue
            limit = _MAX_DETAIL if name == "detail" else _MAX_TEXT
            if not isinstance(value, str) or (name in ("action", "outcome") and not value) or len(value) > limit:
                raise InvalidInput(f"audit field {name} must be text of at most {limit} characters")
            assert_no_personal_data(value)
        counts_json = None
        if counts is not None:
            if not isinstance(counts, Mapping):
                raise InvalidInput("audit counts must map names to integers")
            for k, v in counts.items():
                if not isinstance(k, str) or not k or len(k) > _MAX_TEXT:
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
            "time": _utc_iso(self._clock()),
            "actor": self.actor_id,
            "counts": json.loads(counts_json) if counts_json is not None else None,
            **fields,
        }
        entry["prev_hash"] = prev
        entry["hash"] = _entry_hash(entry, bytes.fromhex(prev)).hex()
        row = dict(entry, counts=counts_json)
        self._db.execute(
            f"INSERT INTO audit_log({', '.join(_ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(_ENTRY_COLUMNS))})",
            [row[c] for c in _ENTRY_COLUMNS],
        )
        return entry

    def _insert_signed(self, kind: str, seq: int, head: str) -> dict[str, Any]:
        assert self._signer is not None
        cp = {"kind": kind, "seq": seq, "head": head, "time": _utc_iso(self._clock()),
              "actor": self.actor_id, "public_key": self._signer.public_key().to_hex()}
        cp["signature"] = self._signer.sign(_checkpoint_payload(cp)).hex()
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
        cutoff = _utc_iso(self._clock() - timedelta(days=days))
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
                f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM audit_log ORDER BY seq")]
            cps = [dict(r) for r in self._db.execute(
                "SELECT kind, seq, head, time, actor, public_key, signature FROM audit_checkpoints"
                " ORDER BY seq, id")]
        for e in entries:
            e["counts"] = _load_counts(e["counts"])
        return entries, cps

    def entries(self, *, job: str | None = None, since_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored entries in order (optionally one job's), as returned by :meth:`append`."""
        sql = f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM audit_log WHERE seq > ?"
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
            r["counts"] = _load_counts(r["counts"])
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
        trusted = _as_key_list(public_key)
        if trusted is None and self._signer is not None:
            trusted = [self._signer.public_key()]
        entries, cps = self._rows()
        return _verify_records(entries, cps, self.actor_id, trusted, all_signatures)

    # -- export
    def export(self, path: str | os.PathLike) -> int:
        """Write a self-contained JSON-lines copy (header, checkpoints, entries); returns the
        number of entries. The head is checkpointed first when this log can sign."""
        if self._signer is not None:
            self.checkpoint()
        entries, cps = self._rows()
        keys = sorted({cp["public_key"] for cp in cps})
        header = {"type": "header", "format": _EXPORT_FORMAT, "actor": self.actor_id,
                  "exported_at": _utc_iso(self._clock()), "entries": len(entries),
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


def _load_counts(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # unreadable counts: left as text so verification reports the entry


def verify_export(
    path: str | os.PathLike,
    trusted_public_key: Sm2PublicKey | Iterable[Sm2PublicKey] | None = None,
) -> VerifyReport:
    """Verify an exported log on its own (e.g. at a regulator). Without a trusted key the
    signatures are checked against the keys the file names, which proves consistency only."""
    entries: list[dict[str, Any]] = []
    cps: list[dict[str, Any]] = []
    header: dict[str, Any] | None = None
    problems: list[str] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    kind = rec.pop("type")
                except (ValueError, AttributeError, KeyError, TypeError):
                    problems.append(f"line {lineno} is not a valid record")
                    continue
                if kind == "header" and header is None and lineno == 1:
                    header = rec
                elif kind == "checkpoint":
                    cps.append(rec)
                elif kind == "entry":
                    entries.append(rec)
                else:
                    problems.append(f"line {lineno} has an unexpected record type")
    except (OSError, UnicodeDecodeError):
        return VerifyReport(ok=False, entries=0, problems=["export file cannot be read"])
    actor = None
    if header is None or header.get("format") != _EXPORT_FORMAT:
        problems.append("export header is missing or of an unknown format")
    else:
        actor = header.get("actor")
        if header.get("entries") != len(entries):
            problems.append("export holds a different number of entries than its header says")
    trusted = _as_key_list(trusted_public_key)
    if trusted is None:
        try:
            stated = [Sm2PublicKey.from_hex(k) for k in (header or {}).get("public_keys", [])]
        except (CryptoError, AttributeError, TypeError):
            stated = []
            problems.append("export header names an unreadable public key")
        report = _verify_records(entries, cps, actor, stated)
        report.key_trusted = False
    else:
        report = _verify_records(entries, cps, actor, trusted)
    if not cps:
        problems.append("export holds no signed checkpoint")
    report.problems = problems + report.problems
    report.ok = not report.problems
    return report
