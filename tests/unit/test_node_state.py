"""A node's state: once-only markers and quota charges are atomic; the lookup filter cache."""
from __future__ import annotations

import csv
import datetime as dt
import threading
import time
from types import SimpleNamespace

import pytest

from pc_common.errors import PermissionDenied, ResourceExhausted
from pc_node import idnum
from pc_node.governance import Governance
from pc_node.importer import import_file
from pc_node.psi import LookupRequester
from pc_node.runtime import open_cipher
from pc_node.steps.admit import use_once
from pc_node.steps.lookup import provider_for
from pc_node.store import NodeStore

THREADS = 8
ROUNDS = 25
QUOTA = {"jobs_per_hour": 2, "jobs_per_day": 100, "subjects_per_hour": 10**6, "subjects_per_day": 10**6}


def race(n: int, fn) -> list:
    """Run ``fn()`` in ``n`` threads released at the same instant; what each returned or raised."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.fixture(params=["one connection", "one connection per thread"])
def governances(request, tmp_path):
    """Governance objects on one database: shared (threads of a node) or one each (as processes)."""
    path = tmp_path / "governance.db"
    if request.param == "one connection":
        g = Governance(path)
        yield lambda: g
        g.close()
    else:
        made: list[Governance] = []
        lock = threading.Lock()

        def new() -> Governance:
            with lock:
                made.append(Governance(path))
                return made[-1]
        yield new
        for g in made:
            g.close()


def test_racing_step_replays_let_exactly_one_through(governances):
    expires = time.time() + 3600
    for r in range(ROUNDS):
        doc = {"job_id": f"job{r}", "expires_at": expires}
        outcomes = race(THREADS, lambda: use_once(SimpleNamespace(governance=governances()), doc, "psi.own"))
        assert outcomes.count(None) == 1, outcomes
        assert all(isinstance(o, PermissionDenied) for o in outcomes if o is not None)


def test_racing_uses_stop_at_the_limit(governances):
    doc = {"job_id": "hops", "expires_at": time.time() + 3600}
    outcomes = race(THREADS, lambda: use_once(SimpleNamespace(governance=governances()), doc, "psi.hop", limit=3))
    assert outcomes.count(None) == 3


def test_racing_admissions_charge_a_job_once(governances):
    expires = time.time() + 3600
    for r in range(ROUNDS):
        outcomes = race(THREADS, lambda: governances().charge(f"r{r}#charged", f"req{r}", 10, QUOTA, expires))
        assert outcomes.count(True) == 1 and outcomes.count(False) == THREADS - 1, outcomes
        # Counted once: a second job still fits the quota of two jobs an hour, a third does not.
        g = governances()
        assert g.charge(f"r{r}b#charged", f"req{r}", 10, QUOTA, expires) is True
        with pytest.raises(ResourceExhausted, match="jobs_per_hour"):
            g.charge(f"r{r}c#charged", f"req{r}", 10, QUOTA, expires)
        # A refused charge leaves no marker: the job is charged once the quota allows it.
        assert g.charge(f"r{r}c#charged", f"req{r}", 10, dict(QUOTA, jobs_per_hour=3), expires) is True


def test_markers_and_specs(tmp_path):
    g = Governance(tmp_path / "governance.db")
    assert not g.is_marked("j#admitted")
    assert g.mark_once("j#admitted", time.time() + 60) and not g.mark_once("j#admitted", time.time() + 60)
    assert g.is_marked("j#admitted")
    g.remember_spec("j", b"digest", time.time() + 60)
    g.remember_spec("j", b"digest", time.time() + 60)          # the same spec again is fine
    with pytest.raises(PermissionDenied, match="replay"):
        g.remember_spec("j", b"other", time.time() + 60)
    g.close()


# ----- the lookup filter cache (runtime.lookup_providers, see steps.lookup.provider_for) ---------
class _Audit:
    def __init__(self):
        self.events: list[str] = []

    def append(self, event: str, **_fields) -> None:
        self.events.append(event)


def _ids(n: int) -> list[str]:
    return [idnum.make_id("440305", dt.date(1980, 1, 1) + dt.timedelta(days=41 * i), 100 + i) for i in range(n)]


def _write(path, ids: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id_number", "plate"])
        w.writerows([i, f"粤B{n:05d}"] for n, i in enumerate(ids))


def _runtime(store: NodeStore) -> SimpleNamespace:
    """The parts of a NodeRuntime that provider_for uses (a fresh one is a restarted node)."""
    return SimpleNamespace(store=store, audit=_Audit(), lookup_providers={}, lookup_lock=threading.Lock(),
                           lookup_clock=time.time, config=SimpleNamespace(lookup_epoch_days=7))


def _found(provider, requester: LookupRequester, ids: list[str]) -> list[str]:
    q = requester.query(ids)
    return q.finish(provider.evaluate(q.blinded(), q.count)).members


def test_filter_cache_reuses_updates_and_survives_a_restart(tmp_path):
    store = NodeStore(tmp_path / "node.db", open_cipher(tmp_path, tmp_path / "master.key"))
    ids = _ids(6)
    csv_path = tmp_path / "owners.csv"
    _write(csv_path, ids[:4])
    import_file(store, csv_path)
    rt = _runtime(store)

    p = provider_for(rt, "owners", "civil_affairs", [], False)
    assert provider_for(rt, "owners", "civil_affairs", [], False) is p and rt.audit.events == ["lookup.build"]
    requester = LookupRequester(p.snapshot())
    assert _found(p, requester, ids) == ids[:4]

    _write(csv_path, ids[1:6])                      # one row gone, two new: the filter moves by a delta
    import_file(store, csv_path, replace=True)
    assert provider_for(rt, "owners", "civil_affairs", [], False) is p and p.version == 1 and rt.audit.events == ["lookup.build"]
    for delta in p.deltas_since(0):
        requester.apply_delta(delta)
    assert _found(p, requester, ids) == ids[1:6]

    labelled = provider_for(rt, "owners", "civil_affairs", ["plate"], True)   # its own entry, its own epoch
    assert labelled is not p and labelled.epoch != p.epoch and labelled.label_size > 0

    restarted = _runtime(store)
    again = provider_for(restarted, "owners", "civil_affairs", [], False)
    assert again is not p and restarted.audit.events == ["lookup.build"]
    assert again.epoch.split("-")[0] == p.epoch.split("-")[0]   # the epoch key comes from the store
    assert _found(p, LookupRequester(again.snapshot()), ids) == ids[1:6]
    store.close()
