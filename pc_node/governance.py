"""Approvals (事前审批), quotas with anomaly blocking, and replay protection at a node.

Persisted in ``governance.db`` in the node's data directory so decisions, counters and
suspensions survive restarts.
"""
from __future__ import annotations

import sqlite3
import threading
import time

from pc_common.errors import FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    job_id TEXT PRIMARY KEY, requester TEXT NOT NULL, purpose TEXT NOT NULL, datasets TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, expires_at REAL NOT NULL,
    decided_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS usage (
    requester TEXT NOT NULL, at REAL NOT NULL, jobs INTEGER NOT NULL, subjects INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bursts (requester TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS suspensions (requester TEXT PRIMARY KEY, since REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_specs (job_id TEXT PRIMARY KEY, digest BLOB NOT NULL, expires_at REAL NOT NULL);
"""
BURSTS_BEFORE_SUSPENSION = 3
BURST_WINDOW_SECONDS = 24 * 3600


class Governance:
    def __init__(self, path, approval_ttl_hours: int = 72):
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self.approval_ttl = approval_ttl_hours * 3600

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----- replay protection ------------------------------------------------------
    def remember_spec(self, job_id: str, digest: bytes, expires_at: float) -> None:
        """First sight of a job spec; the same job id with another spec is a replay/forgery."""
        with self._lock:
            r = self._db.execute("SELECT digest FROM seen_specs WHERE job_id = ?", (job_id,)).fetchone()
            if r is None:
                self._db.execute("INSERT INTO seen_specs VALUES (?, ?, ?)", (job_id, digest, expires_at))
                self._db.execute("DELETE FROM seen_specs WHERE expires_at < ?", (time.time() - 86400,))
            elif bytes(r[0]) != digest:
                raise PermissionDenied("a different job spec was already used with this job id (replay)")

    def spec_seen(self, job_id: str, digest: bytes) -> bool:
        with self._lock:
            r = self._db.execute("SELECT digest FROM seen_specs WHERE job_id = ?", (job_id,)).fetchone()
        return r is not None and bytes(r[0]) == digest

    # ----- approvals ---------------------------------------------------------------
    def approval_state(self, job_id: str, requester: str, purpose: str, datasets: list[str]) -> str:
        """'approved', 'rejected', 'expired' or 'pending' (creating the request if new)."""
        now = time.time()
        with self._lock:
            r = self._db.execute("SELECT state, expires_at FROM approvals WHERE job_id = ?", (job_id,)).fetchone()
            if r is None:
                self._db.execute("INSERT INTO approvals (job_id, requester, purpose, datasets, state, created_at,"
                                 " expires_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                                 (job_id, requester, purpose, ",".join(datasets), now, now + self.approval_ttl))
                return "pending"
            state, expires = r
            if state == "pending" and now > expires:
                self._db.execute("UPDATE approvals SET state = 'expired' WHERE job_id = ?", (job_id,))
                return "expired"
            return state

    def approvals(self) -> list[dict]:
        with self._lock:
            now = time.time()
            self._db.execute("UPDATE approvals SET state = 'expired' WHERE state = 'pending' AND expires_at < ?",
                             (now,))
            rows = self._db.execute("SELECT job_id, requester, purpose, datasets, state, reason, created_at"
                                    " FROM approvals ORDER BY created_at DESC LIMIT 500").fetchall()
        return [dict(job_id=r[0], requester=r[1], purpose=r[2], datasets=r[3].split(","), state=r[4],
                     reason=r[5], created_at=r[6]) for r in rows]

    def decide(self, job_id: str, approve: bool, reason: str, officer: str) -> dict:
        with self._lock:
            r = self._db.execute("SELECT state, expires_at FROM approvals WHERE job_id = ?", (job_id,)).fetchone()
            if r is None:
                raise NotFound("no approval request for this job")
            if r[0] != "pending" or time.time() > r[1]:
                raise FailedPrecondition(f"approval request is {r[0] if r[0] != 'pending' else 'expired'}")
            self._db.execute("UPDATE approvals SET state = ?, reason = ?, decided_by = ? WHERE job_id = ?",
                             ("approved" if approve else "rejected", reason[:500], officer, job_id))
        return next(a for a in self.approvals() if a["job_id"] == job_id)

    # ----- quotas and anomaly blocking ------------------------------------------------
    def charge(self, requester: str, subjects: int, quota: dict) -> None:
        """Count one job of ``subjects`` against the quota or refuse it (RESOURCE_EXHAUSTED)."""
        now = time.time()
        with self._lock:
            s = self._db.execute("SELECT reason FROM suspensions WHERE requester = ?", (requester,)).fetchone()
            if s is not None:
                raise ResourceExhausted(f"requester '{requester}' is suspended after repeated quota bursts;"
                                        " an officer must lift it (pc policy unsuspend)")
            used = {}
            for window, label in ((3600, "hour"), (86400, "day")):
                jobs, subj = self._db.execute("SELECT COALESCE(SUM(jobs),0), COALESCE(SUM(subjects),0) FROM usage"
                                              " WHERE requester = ? AND at > ?", (requester, now - window)).fetchone()
                used[f"jobs_per_{label}"] = jobs + 1
                used[f"subjects_per_{label}"] = subj + subjects
            over = [k for k, v in used.items() if v > quota.get(k, float("inf"))]
            if over:
                self._db.execute("INSERT INTO bursts VALUES (?, ?)", (requester, now))
                n = self._db.execute("SELECT COUNT(*) FROM bursts WHERE requester = ? AND at > ?",
                                     (requester, now - BURST_WINDOW_SECONDS)).fetchone()[0]
                if n >= BURSTS_BEFORE_SUSPENSION:
                    self._db.execute("INSERT OR REPLACE INTO suspensions VALUES (?, ?, ?)",
                                     (requester, now, f"{n} quota bursts within a day"))
                raise ResourceExhausted(f"quota exceeded for requester '{requester}': {', '.join(sorted(over))}")
            self._db.execute("INSERT INTO usage VALUES (?, ?, 1, ?)", (requester, now, subjects))
            self._db.execute("DELETE FROM usage WHERE at < ?", (now - 2 * 86400,))

    def is_suspended(self, requester: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM suspensions WHERE requester = ?", (requester,)).fetchone() is not None

    def unsuspend(self, requester: str) -> bool:
        with self._lock:
            self._db.execute("DELETE FROM bursts WHERE requester = ?", (requester,))
            return self._db.execute("DELETE FROM suspensions WHERE requester = ?", (requester,)).rowcount > 0

    def suspensions(self) -> list[dict]:
        with self._lock:
            return [dict(requester=r[0], since=r[1], reason=r[2])
                    for r in self._db.execute("SELECT requester, since, reason FROM suspensions")]
