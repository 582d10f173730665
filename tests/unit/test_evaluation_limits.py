"""How often a provider evaluates one subject for one requester (pc_node.governance): counted
under blind indexes, all or nothing per job, atomically, on an injected clock; and what an
approval request stores for the officer."""
from __future__ import annotations

import sqlite3
import time

import pytest

from pc_common.errors import ResourceExhausted
from pc_node.governance import Governance
from tests.unit.test_node_state import THREADS, race

DAY = 86400.0
A, B, C = (bytes([i]) * 32 for i in (1, 2, 3))


@pytest.fixture
def gov(tmp_path):
    g = Governance(tmp_path / "governance.db")
    now = [1_700_000_000.0]
    g.clock = lambda: now[0]
    g.now = now
    yield g
    g.close()


def test_fourth_evaluation_in_a_period_is_refused_and_nothing_charged(gov):
    limits = [(3, DAY)]
    for i in range(3):
        assert gov.charge_evaluations(f"j{i}#evaluations", "civil_affairs", [A, B], limits, 2e9)
    with pytest.raises(ResourceExhausted, match=r"2 subject\(s\) of the job were already evaluated 3 time\(s\) "
                                                r"for requester 'civil_affairs' within a day"):
        gov.charge_evaluations("j3#evaluations", "civil_affairs", [A, B, C], limits, 2e9)
    # All or nothing: C, new in the refused job, was not charged; the refused job can be charged later.
    assert gov.evaluations("civil_affairs", C, DAY) == 0 and gov.evaluations("civil_affairs", A, DAY) == 3
    assert gov.charge_evaluations("j4#evaluations", "civil_affairs", [C], limits, 2e9)
    # Another requester has its own count.
    assert gov.charge_evaluations("j5#evaluations", "tax", [A], limits, 2e9)
    # A job is charged at most once, however often its step is retried.
    assert gov.charge_evaluations("j4#evaluations", "civil_affairs", [C], limits, 2e9) is False
    assert gov.evaluations("civil_affairs", C, DAY) == 1
    # A day later the window has moved on.
    gov.now[0] += DAY + 1
    assert gov.charge_evaluations("j3#evaluations", "civil_affairs", [A, B, C], limits, 2e9)


def test_every_grant_limit_holds(gov):
    assert gov.charge_evaluations("a#e", "civil_affairs", [A], [(5, DAY)], 2e9)
    gov.now[0] += 2 * 3600
    assert gov.charge_evaluations("b#e", "civil_affairs", [A], [(5, DAY)], 2e9)
    gov.now[0] += 2 * 3600
    # One hour limit of 1 (the last evaluation was two hours ago) and a day limit of 2: the day one refuses.
    with pytest.raises(ResourceExhausted, match="within a day"):
        gov.charge_evaluations("c#e", "civil_affairs", [A], [(1, 3600), (2, DAY)], 2e9)
    assert gov.charge_evaluations("c#e", "civil_affairs", [A], [(1, 3600), (3, DAY)], 2e9)
    with pytest.raises(ResourceExhausted, match="within an hour"):
        gov.charge_evaluations("d#e", "civil_affairs", [A], [(1, 3600), (9, DAY)], 2e9)


def test_racing_jobs_never_exceed_the_limit(tmp_path):
    """Jobs racing from several processes' connections for the same subjects: exactly N pass."""
    path = tmp_path / "governance.db"
    govs = [Governance(path) for _ in range(THREADS)]
    n = iter(range(THREADS))
    try:
        def one():
            i = next(n)
            return govs[i].charge_evaluations(f"job{i}#evaluations", "civil_affairs", [A, B], [(3, DAY)],
                                              time.time() + 600)
        outcomes = race(THREADS, one)
        assert outcomes.count(True) == 3
        assert all(isinstance(o, ResourceExhausted) for o in outcomes if o is not True)
        assert govs[0].evaluations("civil_affairs", A, DAY) == 3
    finally:
        for g in govs:
            g.close()


def test_approval_request_keeps_its_details_and_old_databases_gain_the_column(tmp_path):
    path = tmp_path / "governance.db"
    with sqlite3.connect(path) as db:       # a database from before approval details
        db.execute("CREATE TABLE approvals (job_id TEXT PRIMARY KEY, requester TEXT NOT NULL, purpose TEXT NOT NULL,"
                   " datasets TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', created_at REAL"
                   " NOT NULL, expires_at REAL NOT NULL, decided_by TEXT NOT NULL DEFAULT '')")
        db.execute("INSERT INTO approvals (job_id, requester, purpose, datasets, state, created_at, expires_at)"
                   " VALUES ('old', 'civil_affairs', 'p', 'vehicles', 'pending', 1, 2)")
    g = Governance(path)
    try:
        details = {"kind": "verify", "subjects": 7, "rule": "home",
                   "criteria": [{"name": "one_home", "type": "count_at_most", "sources": ["housing.properties"],
                                 "where": "usage = 'residential'", "threshold": "max = 1"}]}
        assert g.approval_state("new", "civil_affairs", "p", ["properties"], details) == "pending"
        got = {a["job_id"]: a for a in g.approvals()}
        assert got["new"]["details"] == details and got["old"]["details"] == {}
    finally:
        g.close()
