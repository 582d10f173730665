"""Approvals (事前审批), quotas with anomaly blocking, and replay protection at a node.

Persisted in ``governance.db`` in the node's data directory so decisions, counters and
suspensions survive restarts. Every check-and-set is one atomic step in the database (an
``INSERT OR IGNORE`` whose row count says who won, inside an ``IMMEDIATE`` transaction where
more has to be read), so two threads or two processes racing on the same job never both pass.
"""
from __future__ import annotations

import contextlib
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
CREATE TABLE IF NOT EXISTS markers (name TEXT PRIMARY KEY, expires_at REAL NOT NULL);
"""
KEEP_EXPIRED_SECONDS = 86400     # replay records and markers outlive their job spec by a day
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

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction, taken before the first read (serialises other processes too)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ----- replay protection and once-only markers ------------------------------------
    def remember_spec(self, job_id: str, digest: bytes, expires_at: float) -> None:
        """First sight of a job spec; the same job id with another spec is a replay/forgery."""
        with self._lock:
            if self._db.execute("INSERT OR IGNORE INTO seen_specs VALUES (?, ?, ?)",
                                (job_id, digest, expires_at)).rowcount:
                self._db.execute("DELETE FROM seen_specs WHERE expires_at < ?", (time.time() - KEEP_EXPIRED_SECONDS,))
                return
            r = self._db.execute("SELECT digest FROM seen_specs WHERE job_id = ?", (job_id,)).fetchone()
        if bytes(r[0]) != digest:
            raise PermissionDenied("a different job spec was already used with this job id (replay)")

    def mark_once(self, marker: str, expires_at: float) -> bool:
        """Set a once-only marker (e.g. ``job#psi.own#0``); True only for the one call that set it."""
        with self._lock:
            if not self._db.execute("INSERT OR IGNORE INTO markers VALUES (?, ?)", (marker, expires_at)).rowcount:
                return False
            self._db.execute("DELETE FROM markers WHERE expires_at < ?", (time.time() - KEEP_EXPIRED_SECONDS,))
            return True

    def is_marked(self, marker: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM markers WHERE name = ?", (marker,)).fetchone() is not None

    # ----- approvals ---------------------------------------------------------------
    def approval_state(self, job_id: str, requester: str, purpose: str, datasets: list[str]) -> str:
        """'approved', 'rejected', 'expired' or 'pending' (creating the request if new)."""
        now = time.time()
        with self._lock:
            if self._db.execute("INSERT OR IGNORE INTO approvals (job_id, requester, purpose, datasets, state,"
                                " created_at, expires_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                                (job_id, requester, purpose, ",".join(datasets), now,
                                 now + self.approval_ttl)).rowcount:
                return "pending"
            state, expires = self._db.execute("SELECT state, expires_at FROM approvals WHERE job_id = ?",
                                              (job_id,)).fetchone()
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
    def charge(self, marker: str, requester: str, subjects: int, quota: dict, expires_at: float) -> bool:
        """Count one job of ``subjects`` against the quota, at most once per ``marker``.

        True when this call charged it, False when it was charged before (by any thread or
        process); RESOURCE_EXHAUSTED, with nothing charged and the marker left unset, when the
        quota does not allow it (a burst, counted towards suspension) or the requester is suspended.
        """
        now = time.time()
        with self._transaction() as db:
            if not db.execute("INSERT OR IGNORE INTO markers VALUES (?, ?)", (marker, expires_at)).rowcount:
                return False
            refusal = self._quota_refusal(db, requester, subjects, quota, now)
            if refusal:
                db.execute("DELETE FROM markers WHERE name = ?", (marker,))
            else:
                db.execute("INSERT INTO usage VALUES (?, ?, 1, ?)", (requester, now, subjects))
                db.execute("DELETE FROM usage WHERE at < ?", (now - 2 * 86400,))
        if refusal:
            raise ResourceExhausted(refusal)
        return True

    @staticmethod
    def _quota_refusal(db, requester: str, subjects: int, quota: dict, now: float) -> str | None:
        """Why the job may not be charged (recording a burst), or None (inside charge's transaction)."""
        if db.execute("SELECT 1 FROM suspensions WHERE requester = ?", (requester,)).fetchone() is not None:
            return (f"requester '{requester}' is suspended after repeated quota bursts;"
                    " an officer must lift it (pc policy unsuspend)")
        used = {}
        for window, label in ((3600, "hour"), (86400, "day")):
            jobs, subj = db.execute("SELECT COALESCE(SUM(jobs),0), COALESCE(SUM(subjects),0) FROM usage"
                                    " WHERE requester = ? AND at > ?", (requester, now - window)).fetchone()
            used[f"jobs_per_{label}"] = jobs + 1
            used[f"subjects_per_{label}"] = subj + subjects
        over = [k for k, v in used.items() if v > quota.get(k, float("inf"))]
        if not over:
            return None
        db.execute("INSERT INTO bursts VALUES (?, ?)", (requester, now))
        n = db.execute("SELECT COUNT(*) FROM bursts WHERE requester = ? AND at > ?",
                       (requester, now - BURST_WINDOW_SECONDS)).fetchone()[0]
        if n >= BURSTS_BEFORE_SUSPENSION:
            db.execute("INSERT OR REPLACE INTO suspensions VALUES (?, ?, ?)",
                       (requester, now, f"{n} quota bursts within a day"))
        return f"quota exceeded for requester '{requester}': {', '.join(sorted(over))}"

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
