"""Persistent job store and the job state machine.

    created ──► pending_approval ──► running ──► succeeded
        │              │                 ├─────► failed
        └──────────────┴─────────────────┴─────► cancelled

Only the coordinator's view of a job lives here: kind, parties, state, progress,
sizes and the leakage report. Never identifiers, values or results.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import datetime as dt

from pc_common.errors import AlreadyExists, FailedPrecondition, NotFound
from pc_common.pb import coordinator_pb2, common_pb2

TERMINAL = ("succeeded", "failed", "cancelled")
TRANSITIONS = {
    "created": {"pending_approval", "running", "failed", "cancelled"},
    "pending_approval": {"running", "failed", "cancelled"},
    "running": {"succeeded", "failed", "cancelled", "pending_approval"},
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    spec BLOB NOT NULL,
    signature BLOB NOT NULL,
    providers TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}',
    leakage TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobStore:
    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self._db, self._lock = db, lock
        self.changed = threading.Condition(lock)
        with self._lock:
            self._db.executescript(SCHEMA)

    def create(self, job_id: str, kind: str, requester: str, spec: bytes, signature: bytes,
               providers: list[str]) -> None:
        now = time.time()
        with self._lock:
            try:
                self._db.execute("INSERT INTO jobs (job_id, kind, requester, state, spec, signature, providers,"
                                 " created_at, updated_at) VALUES (?, ?, ?, 'created', ?, ?, ?, ?, ?)",
                                 (job_id, kind, requester, spec, signature, json.dumps(providers), now, now))
            except sqlite3.IntegrityError:
                raise AlreadyExists("a job with this id was already submitted (replayed spec?)") from None
            self.changed.notify_all()

    def _row(self, job_id: str):
        r = self._db.execute("SELECT job_id, kind, requester, state, reason, providers, progress, summary, leakage,"
                             " created_at, updated_at, spec, signature FROM jobs WHERE job_id = ?",
                             (job_id,)).fetchone()
        if r is None:
            raise NotFound("no such job")
        return r

    def get(self, job_id: str) -> coordinator_pb2.Job:
        with self._lock:
            return self._to_pb(self._row(job_id))

    def spec(self, job_id: str) -> tuple[bytes, bytes]:
        with self._lock:
            r = self._row(job_id)
        return bytes(r[11]), bytes(r[12])

    def state(self, job_id: str) -> str:
        with self._lock:
            return self._row(job_id)[3]

    @staticmethod
    def _to_pb(r) -> coordinator_pb2.Job:
        progress = json.loads(r[6])
        return coordinator_pb2.Job(
            job_id=r[0], kind=r[1], requester=r[2], state=r[3], reason=r[4],
            providers=json.loads(r[5]),
            progress=[common_pb2.Progress(step=p["step"], party=p["party"], done=p["done"], total=p["total"])
                      for p in progress.values()],
            summary_json=r[7], leakage_json=r[8], created_at=_iso(r[9]), updated_at=_iso(r[10]))

    def list(self, requester: str | None = None, limit: int = 200) -> list[coordinator_pb2.Job]:
        with self._lock:
            q = ("SELECT job_id, kind, requester, state, reason, providers, progress, summary, leakage, created_at,"
                 " updated_at, spec, signature FROM jobs")
            args: tuple = ()
            if requester is not None:
                q += " WHERE requester = ?"
                args = (requester,)
            rows = self._db.execute(q + " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._to_pb(r) for r in rows]

    def transition(self, job_id: str, state: str, reason: str = "") -> bool:
        """Move a job to ``state``; False if it already ended (e.g. cancelled meanwhile)."""
        with self._lock:
            current = self._row(job_id)[3]
            if current == state:
                return True
            if current in TERMINAL:
                return False
            if state not in TRANSITIONS.get(current, set()):
                raise FailedPrecondition(f"job cannot go from {current} to {state}")
            self._db.execute("UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE job_id = ?",
                             (state, reason, time.time(), job_id))
            self.changed.notify_all()
            return True

    def progress(self, job_id: str, step: str, party: str, done: int, total: int) -> None:
        with self._lock:
            p = json.loads(self._row(job_id)[6])
            p[f"{step}/{party}"] = {"step": step, "party": party, "done": int(done), "total": int(total)}
            self._db.execute("UPDATE jobs SET progress = ?, updated_at = ? WHERE job_id = ?",
                             (json.dumps(p), time.time(), job_id))
            self.changed.notify_all()

    def record(self, job_id: str, summary: dict | None = None, leakage: dict | None = None) -> None:
        with self._lock:
            r = self._row(job_id)
            s = json.loads(r[7])
            s.update(summary or {})
            lk = json.loads(r[8])
            lk.update(leakage or {})
            self._db.execute("UPDATE jobs SET summary = ?, leakage = ?, updated_at = ? WHERE job_id = ?",
                             (json.dumps(s, ensure_ascii=False), json.dumps(lk, ensure_ascii=False),
                              time.time(), job_id))
            self.changed.notify_all()

    def unfinished(self) -> list[dict]:
        """Jobs that were not over when the coordinator stopped, oldest first (resumed or failed at start)."""
        with self._lock:
            rows = self._db.execute("SELECT job_id, state, requester, providers, created_at FROM jobs"
                                    " WHERE state NOT IN (?, ?, ?) ORDER BY created_at", TERMINAL).fetchall()
        return [{"job_id": r[0], "state": r[1], "requester": r[2], "providers": json.loads(r[3]),
                 "created_at": r[4]} for r in rows]
