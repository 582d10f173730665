"""Approvals (事前审批), quotas with anomaly blocking, and replay protection at a node.

Persisted in ``governance.db`` in the node's data directory so decisions, counters and
suspensions survive restarts. Every check-and-set is one atomic step in the database (an
``INSERT OR IGNORE`` whose row count says who won, inside an ``IMMEDIATE`` transaction where
more has to be read), so two threads or two processes racing on the same job never both pass.

Per-subject evaluation counts (how often a provider evaluated one subject for one requester)
are kept under the node's HMAC-SM3 blind index of the identifier (hex), never the identifier itself,
and charged for all subjects of a job in one transaction. Time comes from ``clock`` (injectable).
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

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
CREATE TABLE IF NOT EXISTS evaluations (requester TEXT NOT NULL, subject TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS evaluations_by_subject ON evaluations (requester, subject, at);
CREATE TEMP TABLE IF NOT EXISTS job_subjects (ix TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lookup_points (requester TEXT NOT NULL, dataset TEXT NOT NULL, epoch INTEGER NOT NULL,
    points INTEGER NOT NULL, PRIMARY KEY (requester, dataset, epoch));
CREATE TABLE IF NOT EXISTS epsilon_spent (requester TEXT NOT NULL, dataset TEXT NOT NULL, at REAL NOT NULL,
    micro INTEGER NOT NULL);
"""
KEEP_EVALUATIONS_SECONDS = 7 * 86400   # the longest evaluation period a grant may set
KEEP_EXPIRED_SECONDS = 86400     # replay records and markers outlive their job spec by a day
BURSTS_BEFORE_SUSPENSION = 3
BURST_WINDOW_SECONDS = 24 * 3600


class Governance:
    def __init__(self, path, approval_ttl_hours: int = 72, clock: Callable[[], float] = time.time):
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        if "details" not in {r[1] for r in self._db.execute("PRAGMA table_info(approvals)")}:
            self._db.execute("ALTER TABLE approvals ADD COLUMN details TEXT NOT NULL DEFAULT '{}'")
        if "seen_at" not in {r[1] for r in self._db.execute("PRAGMA table_info(seen_specs)")}:
            self._db.execute("ALTER TABLE seen_specs ADD COLUMN seen_at REAL NOT NULL DEFAULT 0")
        self.approval_ttl = approval_ttl_hours * 3600
        self.clock = clock      # seconds since the epoch; tests replace it instead of sleeping

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
    def remember_spec(self, job_id: str, digest: bytes, expires_at: float, seen_at: float | None = None) -> None:
        """First sight of a job spec; the same job id with another spec is a replay/forgery.

        ``expires_at`` is the end of the job's lifetime (``jobspec.lifetime_end``); the time of
        first sight (``seen_at``, now by default) is kept for :meth:`first_seen`."""
        seen_at = self.clock() if seen_at is None else seen_at
        with self._lock:
            if self._db.execute("INSERT OR IGNORE INTO seen_specs (job_id, digest, expires_at, seen_at)"
                                " VALUES (?, ?, ?, ?)", (job_id, digest, expires_at, seen_at)).rowcount:
                self._db.execute("DELETE FROM seen_specs WHERE expires_at < ?", (self.clock() - KEEP_EXPIRED_SECONDS,))
                return
            r = self._db.execute("SELECT digest FROM seen_specs WHERE job_id = ?", (job_id,)).fetchone()
        if bytes(r[0]) != digest:
            raise PermissionDenied("a different job spec was already used with this job id (replay)")

    def first_seen(self, job_id: str, digest: bytes) -> float | None:
        """When this node first accepted this very spec (None: never, or another spec under the id)."""
        with self._lock:
            r = self._db.execute("SELECT digest, seen_at FROM seen_specs WHERE job_id = ?", (job_id,)).fetchone()
        return float(r[1]) if r is not None and bytes(r[0]) == digest else None

    def spec_lifetime(self, job_id: str) -> float | None:
        """The end of a seen job's lifetime, None for a job this node has not seen."""
        with self._lock:
            r = self._db.execute("SELECT expires_at FROM seen_specs WHERE job_id = ?", (job_id,)).fetchone()
        return None if r is None else float(r[0])

    def mark_once(self, marker: str, expires_at: float) -> bool:
        """Set a once-only marker (e.g. ``job#psi.own#0``); True only for the one call that set it."""
        with self._lock:
            if not self._db.execute("INSERT OR IGNORE INTO markers VALUES (?, ?)", (marker, expires_at)).rowcount:
                return False
            self._db.execute("DELETE FROM markers WHERE expires_at < ?", (self.clock() - KEEP_EXPIRED_SECONDS,))
            return True

    def is_marked(self, marker: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM markers WHERE name = ?", (marker,)).fetchone() is not None

    # ----- approvals ---------------------------------------------------------------
    def approval_state(self, job_id: str, requester: str, purpose: str, datasets: list[str],
                       details: dict | None = None) -> str:
        """'approved', 'rejected', 'expired' or 'pending' (creating the request if new).

        ``details`` is what the officer is shown besides the purpose (JSON-able: the rule id,
        the criteria touching this node with their thresholds and ``where``, the subject count)."""
        now = self.clock()
        with self._lock:
            if self._db.execute("INSERT OR IGNORE INTO approvals (job_id, requester, purpose, datasets, state,"
                                " created_at, expires_at, details) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                                (job_id, requester, purpose, ",".join(datasets), now, now + self.approval_ttl,
                                 json.dumps(details or {}, sort_keys=True))).rowcount:
                return "pending"
            state, expires = self._db.execute("SELECT state, expires_at FROM approvals WHERE job_id = ?",
                                              (job_id,)).fetchone()
            if state == "pending" and now > expires:
                self._db.execute("UPDATE approvals SET state = 'expired' WHERE job_id = ?", (job_id,))
                return "expired"
            return state

    def approvals(self) -> list[dict]:
        with self._lock:
            now = self.clock()
            self._db.execute("UPDATE approvals SET state = 'expired' WHERE state = 'pending' AND expires_at < ?",
                             (now,))
            rows = self._db.execute("SELECT job_id, requester, purpose, datasets, state, reason, created_at, details"
                                    " FROM approvals ORDER BY created_at DESC LIMIT 500").fetchall()
        return [dict(job_id=r[0], requester=r[1], purpose=r[2], datasets=r[3].split(","), state=r[4],
                     reason=r[5], created_at=r[6], details=json.loads(r[7] or "{}")) for r in rows]

    def decide(self, job_id: str, approve: bool, reason: str, officer: str) -> dict:
        with self._lock:
            r = self._db.execute("SELECT state, expires_at FROM approvals WHERE job_id = ?", (job_id,)).fetchone()
            if r is None:
                raise NotFound("no approval request for this job")
            if r[0] != "pending" or self.clock() > r[1]:
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
        now = self.clock()
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
    def _quota_refusal(db, requester: str, subjects: int, quota: dict, now: float, new_jobs: int = 1) -> str | None:
        """Why the job may not be charged (recording a burst), or None (inside charge's transaction)."""
        if db.execute("SELECT 1 FROM suspensions WHERE requester = ?", (requester,)).fetchone() is not None:
            return (f"requester '{requester}' is suspended after repeated quota bursts;"
                    " an officer must lift it (pc policy unsuspend)")
        used = {}
        for window, label in ((3600, "hour"), (86400, "day")):
            jobs, subj = db.execute("SELECT COALESCE(SUM(jobs),0), COALESCE(SUM(subjects),0) FROM usage"
                                    " WHERE requester = ? AND at > ?", (requester, now - window)).fetchone()
            used[f"jobs_per_{label}"] = jobs + new_jobs
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

    # ----- how often one subject is evaluated -------------------------------------------
    def charge_evaluations(self, marker: str, requester: str, subjects: Sequence[bytes],
                           limits: Sequence[tuple[int, float]], expires_at: float) -> bool:
        """Count one evaluation of every subject (blind indexes) for ``requester``, all or nothing.

        ``limits`` are (at most N evaluations, per period in seconds), one per grant of the job.
        True when this call charged (at most once per ``marker``), False when charged before;
        RESOURCE_EXHAUSTED, with nothing charged, when some subject has had N evaluations within
        a period already. The message gives counts only, never an identifier or index.
        """
        now = self.clock()
        over = 0
        # Hex text handed to SQLite in one parameter (it dedups and sorts into the temporary table):
        # 300,000 subjects in one to two seconds.
        batch = json.dumps([bytes(ix).hex() for ix in subjects])
        with self._transaction() as db:
            if not db.execute("INSERT OR IGNORE INTO markers VALUES (?, ?)", (marker, expires_at)).rowcount:
                return False
            db.execute("DELETE FROM temp.job_subjects")
            db.execute("INSERT OR IGNORE INTO temp.job_subjects SELECT value FROM json_each(?)", (batch,))
            for n, period in sorted(set(limits)):
                over = db.execute(
                    "SELECT COUNT(*) FROM (SELECT e.subject FROM evaluations e JOIN temp.job_subjects j"
                    " ON e.subject = j.ix WHERE e.requester = ? AND e.at > ? GROUP BY e.subject"
                    " HAVING COUNT(*) >= ?)", (requester, now - period, n)).fetchone()[0]
                if over:
                    refusal = (f"{over} subject(s) of the job were already evaluated {n} time(s) for requester"
                               f" '{requester}' within {_period_text(period)}, the most this node's grant allows")
                    break
            if over:
                db.execute("DELETE FROM markers WHERE name = ?", (marker,))
            else:
                db.execute("INSERT INTO evaluations SELECT ?, ix, ? FROM temp.job_subjects", (requester, now))
                db.execute("DELETE FROM evaluations WHERE at < ?", (now - KEEP_EVALUATIONS_SECONDS,))
            db.execute("DELETE FROM temp.job_subjects")
        if over:
            raise ResourceExhausted(refusal)
        return True

    def evaluations(self, requester: str, subject: bytes, period: float) -> int:
        """How often ``subject`` (a blind index) was evaluated for ``requester`` in the last ``period`` s."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM evaluations WHERE requester = ? AND subject = ? AND at > ?",
                                    (requester, bytes(subject).hex(), self.clock() - period)).fetchone()[0]

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

    # ----- lookups: charged per point evaluated, capped per key epoch ----------------------
    def charge_points(self, marker: str, requester: str, points: int, extra_subjects: int, quota: dict,
                      dataset: str, epoch: int, epoch_cap: int, expires_at: float) -> bool:
        """Charge a lookup's evaluated ``points`` (the requester's signed count), at most once per ``marker``.

        ``extra_subjects`` (points beyond what admission already charged) go against the quota's
        subjects per hour/day, the job itself having been counted at admission; all ``points``
        go against ``epoch_cap``, the most points evaluated for ``requester`` under one key epoch
        of ``dataset``. All or nothing: RESOURCE_EXHAUSTED, with nothing charged, when either
        does not allow it. Counters of older epochs are dropped.
        """
        now = self.clock()
        with self._transaction() as db:
            if not db.execute("INSERT OR IGNORE INTO markers VALUES (?, ?)", (marker, expires_at)).rowcount:
                return False
            refusal = self._quota_refusal(db, requester, extra_subjects, quota, now, new_jobs=0)
            if refusal is None:
                used = db.execute("SELECT COALESCE(SUM(points),0) FROM lookup_points WHERE requester = ? AND"
                                  " dataset = ? AND epoch = ?", (requester, dataset, epoch)).fetchone()[0]
                if used + points > epoch_cap:
                    refusal = (f"lookup cap exceeded for requester '{requester}': {used} of {epoch_cap} points"
                               f" of this key epoch used, {points} more asked")
            if refusal:
                db.execute("DELETE FROM markers WHERE name = ?", (marker,))
            else:
                db.execute("INSERT INTO usage VALUES (?, ?, 0, ?)", (requester, now, extra_subjects))
                db.execute("INSERT INTO lookup_points VALUES (?, ?, ?, ?) ON CONFLICT (requester, dataset, epoch)"
                           " DO UPDATE SET points = points + excluded.points", (requester, dataset, epoch, points))
                db.execute("DELETE FROM lookup_points WHERE epoch < ?", (epoch - 1,))
        if refusal:
            raise ResourceExhausted(refusal)
        return True

    def lookup_points(self, requester: str, dataset: str, epoch: int) -> int:
        """Points evaluated for ``requester`` under key epoch ``epoch`` of ``dataset``."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(points),0) FROM lookup_points WHERE requester = ? AND"
                                    " dataset = ? AND epoch = ?", (requester, dataset, epoch)).fetchone()[0]

    # ----- differential privacy: the ε ledger (micro-ε integers, so sums never drift) ----------
    def charge_epsilon(self, marker: str, requester: str, epsilon: float,
                       budgets: Sequence[tuple[str, float | None, float]], expires_at: float) -> bool:
        """Spend ``epsilon`` of ``requester`` on every (dataset, budget or None, period in s), once per ``marker``.

        All or nothing: RESOURCE_EXHAUSTED, with nothing spent and the marker left unset, when
        some dataset's budget has less than ``epsilon`` left within its period; the message
        gives the remaining budget. True when this call spent it, False when spent before."""
        now, want = self.clock(), _micro(epsilon)
        with self._transaction() as db:
            if not db.execute("INSERT OR IGNORE INTO markers VALUES (?, ?)", (marker, expires_at)).rowcount:
                return False
            refusal = _epsilon_refusal(db, requester, epsilon, budgets, now)
            if refusal:
                db.execute("DELETE FROM markers WHERE name = ?", (marker,))
            else:
                for dataset, _, _ in budgets:
                    db.execute("INSERT INTO epsilon_spent VALUES (?, ?, ?, ?)", (requester, dataset, now, want))
                db.execute("DELETE FROM epsilon_spent WHERE at < ?", (now - KEEP_EVALUATIONS_SECONDS,))
        if refusal:
            raise ResourceExhausted(refusal)
        return True

    def epsilon_refusal(self, requester: str, epsilon: float,
                        budgets: Sequence[tuple[str, float | None, float]]) -> str | None:
        """Why :meth:`charge_epsilon` would refuse ``epsilon`` now (read only), or None."""
        with self._lock:
            return _epsilon_refusal(self._db, requester, epsilon, budgets, self.clock())

    def epsilon_spent(self, requester: str, dataset: str, period: float) -> float:
        """The ε spent by ``requester`` on ``dataset`` in the last ``period`` seconds."""
        with self._lock:
            return _micro_spent(self._db, requester, dataset, self.clock() - period) / 1e6

    def usage(self, requester: str, seconds: float = 86400) -> dict:
        """``{"jobs": …, "subjects": …}`` charged to ``requester`` in the last ``seconds``."""
        with self._lock:
            jobs, subjects = self._db.execute("SELECT COALESCE(SUM(jobs),0), COALESCE(SUM(subjects),0) FROM usage"
                                              " WHERE requester = ? AND at > ?",
                                              (requester, self.clock() - seconds)).fetchone()
        return {"jobs": jobs, "subjects": subjects}


def _micro(epsilon: float) -> int:
    return int(round(float(epsilon) * 1e6))


def _micro_spent(db, requester: str, dataset: str, since: float) -> int:
    return db.execute("SELECT COALESCE(SUM(micro),0) FROM epsilon_spent WHERE requester = ? AND dataset = ?"
                      " AND at > ?", (requester, dataset, since)).fetchone()[0]


def _epsilon_refusal(db, requester: str, epsilon: float, budgets, now: float) -> str | None:
    """The ledger's one decision, in micro-ε integers: the first (dataset, budget, period) with
    less than ``epsilon`` left, as the refusal line with the remaining budget; None if all allow it."""
    want = _micro(epsilon)
    for dataset, budget, period in budgets:
        if budget is None:
            continue
        used = _micro_spent(db, requester, dataset, now - period)
        if used + want > _micro(budget):
            left = max(_micro(budget) - used, 0) / 1e6
            return (f"privacy budget exhausted for requester '{requester}' on '{dataset}': {left:g} of"
                    f" epsilon {budget:g} left within {_period_text(period)}, the query asks {epsilon:g}")
    return None


def _period_text(seconds: float) -> str:
    names = {3600: "an hour", 86400: "a day", 7 * 86400: "a week"}
    return names.get(int(seconds), f"{seconds:g} seconds")
