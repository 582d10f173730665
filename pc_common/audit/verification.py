"""Verification of an audit chain and its signed checkpoints, in the database or in an
export read alone (e.g. at a regulator).

Detects an edited, deleted, inserted or reordered entry anywhere, and truncation of signed
entries; a retention anchor stands for the purged entries before it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pc_common.audit.chain import EXPORT_FORMAT, GENESIS_HASH, MAX_PROBLEMS, checkpoint_payload, entry_hash
from pc_common.errors import CryptoError, IntegrityError
from pc_common.gm import Sm2PublicKey


@dataclass
class VerifyReport:
    ok: bool
    entries: int
    problems: list[str] = field(default_factory=list)
    checkpoints: int = 0
    key_trusted: bool = False  # False: signatures were checked only against keys the log names

    def __bool__(self) -> bool:
        return self.ok


def verify_records(
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
                key.verify(checkpoint_payload(cp), sig)
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
            computed = entry_hash(e, stored_prev).hex()
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

    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
    return VerifyReport(
        ok=not problems,
        entries=len(entries),
        problems=problems,
        checkpoints=len(valid),
        key_trusted=trusted is not None,
    )


def as_key_list(keys: Sm2PublicKey | Iterable[Sm2PublicKey] | None) -> list[Sm2PublicKey] | None:
    if keys is None:
        return None
    if isinstance(keys, Sm2PublicKey):
        return [keys]
    return list(keys)


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
    if header is None or header.get("format") != EXPORT_FORMAT:
        problems.append("export header is missing or of an unknown format")
    else:
        actor = header.get("actor")
        if header.get("entries") != len(entries):
            problems.append("export holds a different number of entries than its header says")
    trusted = as_key_list(trusted_public_key)
    if trusted is None:
        try:
            stated = [Sm2PublicKey.from_hex(k) for k in (header or {}).get("public_keys", [])]
        except (CryptoError, AttributeError, TypeError):
            stated = []
            problems.append("export header names an unreadable public key")
        report = verify_records(entries, cps, actor, stated)
        report.key_trusted = False
    else:
        report = verify_records(entries, cps, actor, trusted)
    if not cps:
        problems.append("export holds no signed checkpoint")
    report.problems = problems + report.problems
    report.ok = not report.problems
    return report
