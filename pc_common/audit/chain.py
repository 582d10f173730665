"""The audit record format: one entry per event, hash-chained with SM3.

Each entry is stored as columns and hashed as canonical JSON (sorted keys, no spaces, UTF-8)::

    hash_n = SM3(canonical(entry_n) || hash_{n-1}),    hash_0 = 32 zero bytes

A checkpoint signs ``(kind, seq, head, time, actor)`` of the chain's head. Entries must never
hold raw personal data: every text field passes :func:`assert_no_personal_data`.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pc_common.errors import InvalidInput
from pc_common.gm import sm3


DEFAULT_RETENTION_DAYS = 180
GENESIS_HASH = bytes(32)
FORMAT = "pc-audit-v1"
EXPORT_FORMAT = "pc-audit-export-v1"
MAX_TEXT = 200
MAX_DETAIL = 2000
MAX_PROBLEMS = 50
TEXT_FIELDS = ("action", "job", "dataset", "requester", "purpose", "detail", "outcome")
ENTRY_COLUMNS = ("seq", "time", "actor", "action", "job", "dataset", "requester", "purpose",
                 "counts", "detail", "outcome", "prev_hash", "hash")

# An 18-character identity number, plain or grouped 6-8-4, and a mainland mobile number.
PERSONAL_PATTERNS = (
    re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])"),
    re.compile(r"(?<![0-9])[0-9]{6}[\s\-][0-9]{8}[\s\-][0-9]{3}[0-9Xx](?![0-9])"),
    re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])"),
)

SCHEMA = """
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


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8 (not ASCII-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def assert_no_personal_data(text: str | None) -> None:
    """Raise InvalidInput if ``text`` looks like it holds an identity or mobile number."""
    if text is None:
        return
    if not isinstance(text, str):
        raise InvalidInput("audit fields must be text")
    for pattern in PERSONAL_PATTERNS:
        if pattern.search(text):
            raise InvalidInput(
                "audit entries must not contain personal data (an identity or phone number was found)"
            )


def utc_iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_payload(e: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of an entry (everything but prev_hash/hash)."""
    return {k: e.get(k) for k in ENTRY_COLUMNS[:-2]}


def entry_hash(e: Mapping[str, Any], prev_hash: bytes) -> bytes:
    return sm3(canonical_json(entry_payload(e)) + prev_hash)


def checkpoint_payload(cp: Mapping[str, Any]) -> bytes:
    return canonical_json({
        "format": FORMAT,
        "kind": cp["kind"],
        "seq": cp["seq"],
        "head": cp["head"],
        "time": cp["time"],
        "actor": cp["actor"],
    })


def load_counts(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # unreadable counts: left as text so verification reports the entry
