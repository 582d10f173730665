"""Query-private lookup (匿踪查询) jobs through real servers.

One small federation (coordinator + civil_affairs and public_security on loopback with
mutual TLS) serves the module. Found / not found is checked against plaintext membership of
the normalised identifiers; the requester's cached filter is reused (deltas) and stays exact
after the provider re-imports its data; label columns follow the provider's grant (masked vs
plaintext); the provider's audit log records counts, never identifiers.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import pathlib

import grpc
import pytest

from pc_client.sdk import Federation
from pc_node import idnum
from pc_node.masking import mask

from tests import lookup_kit
from tests.conftest import norm, write_csv

REQ = "civil_affairs"
PS = "public_security"


def _pool(n: int = 200) -> list[str]:
    base = dt.date(1961, 5, 3)
    out = [idnum.make_id("440305", base + dt.timedelta(days=53 * i), (11 * i + 3) % 1000) for i in range(n)]
    assert len(set(out)) == n
    return out


POOL = _pool()
QUERIES = POOL[0:50]                    # civil_affairs.queries
VEHICLE_IDS = POOL[30:90]               # public_security.vehicles: 20 of the queries
ROSTER = POOL[10:25] + POOL[120:150]    # public_security.roster (re-imported by the delta test)
ADDED = POOL[40]                        # a queried identifier added to the roster later


def plate(i: int, k: int = 0) -> str:
    return f"粤B{(37 * i + 11 * k) % 100000:05d}"


def vehicle_rows() -> list[list[str]]:
    rows = []
    for i, ident in enumerate(VEHICLE_IDS):
        # Lower-case x and blanks at the provider; every fifth owner has two vehicles.
        spelled = f" {ident[:-1]}x " if ident.endswith("X") else ident
        rows.append([spelled, plate(i), "car"])
        if i % 5 == 0:
            rows.append([ident, plate(i, 1), "truck"])
    return rows


VEHICLES_POLICY = f"""
[[grants]]
dataset = "vehicles"
requester = "{REQ}"
purposes = ["data_matching"]
[grants.columns]
id_number = "join_key"
plate = "masked"

[[grants]]
dataset = "roster"
requester = "{REQ}"
purposes = ["data_matching"]
[grants.columns]
id_number = "join_key"
"""


@pytest.fixture(scope="module")
def env(new_federation):
    fed = new_federation("lookup", [REQ, PS])
    root = fed.root.parent
    data = root / "data"
    fed.import_csv(REQ, write_csv(data / "queries.csv", ["id_number", "note"],
                                  [[i, f"q{n}"] for n, i in enumerate(QUERIES)]), dataset="queries")
    fed.import_csv(PS, write_csv(data / "vehicles.csv", ["id_number", "plate", "vehicle_type"], vehicle_rows()),
                   dataset="vehicles")
    fed.import_csv(PS, write_csv(data / "roster.csv", ["id_number", "unit"],
                                 [[i, f"u{n}"] for n, i in enumerate(ROSTER)]), dataset="roster")
    fed.write_policy(PS, VEHICLES_POLICY)
    fed.write_policy(REQ, "")
    return {"fed": fed, "root": root, "data": data}


@pytest.fixture(scope="module")
def fed(env):
    """This module's own federation (the conftest's ``analyst`` is a client of it)."""
    return env["fed"]


def read_result(path: pathlib.Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def membership(rows: list[dict]) -> tuple[set[str], set[str]]:
    assert all(r["found"] in ("true", "false") for r in rows)
    return {r["id_number"] for r in rows if r["found"] == "true"}, {r["id_number"] for r in rows if r["found"] == "false"}


def lookup(c: Federation, provider: str, out: pathlib.Path, **kw):
    res = c.lookup(f"{REQ}.queries", f"{PS}.{provider}", out=out, **kw)
    assert res.state == "succeeded"
    return res, read_result(out)


def check_exact(rows: list[dict], provider_ids: list[str]) -> None:
    present = {norm(i) for i in provider_ids}
    found, missing = membership(rows)
    assert [r["id_number"] for r in rows] == QUERIES          # every query once, in order
    assert found == {q for q in QUERIES if q in present}
    assert missing == {q for q in QUERIES if q not in present}


# ----- membership ------------------------------------------------------------------------------------------
def test_found_equals_plaintext_membership(analyst, tmp_path):
    res, rows = lookup(analyst, "vehicles", tmp_path / "out.csv")
    check_exact(rows, VEHICLE_IDS)
    found, missing = membership(rows)
    assert len(found) == 20 and len(missing) == 30
    # Identifiers the provider spelled with a lower-case x and blanks are found too.
    x_ids = {q for q in QUERIES[30:50] if q.endswith("X")}
    assert x_ids and x_ids <= found
    assert "records" not in rows[0]
    assert res.summary["queried"] == len(QUERIES) and res.summary["found"] == 20
    assert res.rows == len(QUERIES)
    assert set(res.leakage) == {REQ, PS, "coordinator"}
    assert any(f"({len(QUERIES)})" in s for s in res.leakage[PS])


def test_second_lookup_uses_the_cached_filter_and_deltas_stay_exact(env, analyst, tmp_path):
    fed = env["fed"]
    res1, rows = lookup(analyst, "roster", tmp_path / "1.csv")
    assert res1.summary["filter"] == "snapshot"             # first time: the whole filter
    check_exact(rows, ROSTER)
    assert ADDED not in membership(rows)[0]

    res2, rows = lookup(analyst, "roster", tmp_path / "2.csv")
    assert res2.summary["filter"] == "deltas"               # cached: no snapshot again
    assert res2.summary["filter_bytes"] < res1.summary["filter_bytes"]
    check_exact(rows, ROSTER)

    # The provider re-imports its dataset with one row added: the next lookup is still exact.
    grown = ROSTER + [ADDED]
    fed.import_csv(PS, write_csv(env["data"] / "roster2" / "roster.csv", ["id_number", "unit"],
                                 [[i, f"u{n}"] for n, i in enumerate(grown)]), dataset="roster", replace=True)
    res3, rows = lookup(analyst, "roster", tmp_path / "3.csv")
    assert res3.summary["filter"] in ("deltas", "snapshot")
    check_exact(rows, grown)
    assert ADDED in membership(rows)[0]

    # ...and with rows removed again.
    shrunk = [i for i in grown if i not in (ADDED, POOL[12])]
    fed.import_csv(PS, write_csv(env["data"] / "roster3" / "roster.csv", ["id_number", "unit"],
                                 [[i, f"u{n}"] for n, i in enumerate(shrunk)]), dataset="roster", replace=True)
    res4, rows = lookup(analyst, "roster", tmp_path / "4.csv")
    assert res4.summary["filter"] in ("deltas", "snapshot")
    check_exact(rows, shrunk)
    assert ADDED not in membership(rows)[0] and POOL[12] not in membership(rows)[0]


# ----- labels -----------------------------------------------------------------------------------------------
def test_masked_labels_come_back_masked(analyst, tmp_path):
    res, rows = lookup(analyst, "vehicles", tmp_path / "out.csv", labels=["plate"], masked=True)
    check_exact(rows, VEHICLE_IDS)
    by_id: dict[str, list[str]] = {}
    for i, ident in enumerate(VEHICLE_IDS):
        by_id[ident] = [plate(i)] + ([plate(i, 1)] if i % 5 == 0 else [])
    for r in rows:
        if r["found"] == "false":
            assert r["records"] == ""
            continue
        records = json.loads(r["records"])
        plates = by_id[r["id_number"]]
        assert len(records) == len(plates), r["id_number"]
        for rec in records:
            assert len(rec) == 1
            assert rec[0] not in plates
            assert rec[0] == mask(plates[0], "full")
        for p in plates:
            assert p not in r["records"]
    assert any(len(json.loads(r["records"])) == 2 for r in rows if r["found"] == "true")
    assert res.summary["labels"] == ["plate"]


def test_plaintext_label_without_the_grant_is_refused(analyst, tmp_path):
    # The provider's refusal at admission reaches the client as its own status.
    with pytest.raises(grpc.RpcError) as err:
        analyst.lookup(f"{REQ}.queries", f"{PS}.vehicles", out=tmp_path / "out.csv", labels=["plate"])
    msg = err.value.details()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "plate as plaintext" in msg and "vehicles" in msg
    assert not (tmp_path / "out.csv").exists()


def test_masked_labels_need_a_masked_grant(analyst, tmp_path):
    with pytest.raises(grpc.RpcError) as err:
        analyst.lookup(f"{REQ}.queries", f"{PS}.roster", out=tmp_path / "out.csv", labels=["unit"], masked=True)
    msg = err.value.details()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "unit as masked" in msg and "roster" in msg
    # A column the provider does not have is refused before the job starts.
    with pytest.raises(grpc.RpcError) as err:
        analyst.lookup(f"{REQ}.queries", f"{PS}.vehicles", labels=["colour"], masked=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "colour" in err.value.details()


def test_lookup_without_a_grant_is_refused(env, analyst, tmp_path):
    fed = env["fed"]
    fed.import_csv(PS, write_csv(env["data"] / "hidden.csv", ["id_number", "x"], [[POOL[0], "1"]]),
                   dataset="hidden", replace=True)
    with pytest.raises(grpc.RpcError) as err:
        analyst.lookup(f"{REQ}.queries", f"{PS}.hidden", out=tmp_path / "out.csv")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "hidden" in err.value.details()


# ----- what the provider records -------------------------------------------------------------------------------
def test_provider_audit_records_counts_never_identifiers(env, analyst, tmp_path):
    fed = env["fed"]
    res, rows = lookup(analyst, "vehicles", tmp_path / "out.csv")
    check_exact(rows, VEHICLE_IDS)
    audit = fed.runtime(PS).audit
    mine = audit.entries(job=res.job_id)
    evaluated = [e for e in mine if e["action"] == "lookup.evaluate"]
    assert len(evaluated) == 1
    counts = evaluated[0]["counts"]
    counts = json.loads(counts) if isinstance(counts, str) else counts
    assert counts == {"queried": len(QUERIES)}
    assert evaluated[0]["requester"] == REQ and evaluated[0]["dataset"] == "vehicles"
    text = json.dumps(audit.entries(), ensure_ascii=False, default=str)
    for ident in QUERIES + VEHICLE_IDS:
        assert ident not in text and ident.lower() not in text
    # The coordinator's data directory holds no queried identifier either.
    cdir = fed.root / "coordinator"
    for p in (p for p in cdir.rglob("*") if p.is_file()):
        content = p.read_bytes()
        assert not [q for q in QUERIES if q.encode() in content], p


# ----- a malformed peer ---------------------------------------------------------------------------------------
def test_malformed_blinded_points_are_refused(env, analyst, as_coordinator, tmp_path):
    """Points the requester signed (its binding is built here as its node would) but malformed:
    INVALID_ARGUMENT; a correct one is answered once per job."""
    stub = as_coordinator(env["fed"], PS)
    key = lookup_kit.requester_key(env["fed"], REQ)

    def admitted_job():
        """A fresh signed and admitted job (the provider evaluates once per job) and its key epoch."""
        signed, job_id = lookup_kit.signed_lookup(analyst.node, [f"{REQ}.queries", f"{PS}.roster"])

        def head(step):
            return lookup_kit.header(signed, job_id, step)
        assert list(stub.Step(iter([head("job.admit")]), timeout=10))[-1].done.summary["admitted"] == "yes"
        epoch = lookup_kit.summary(list(stub.Step(iter([head("lookup.filter")]), timeout=10)))["epoch"]

        def evaluate(msgs):
            parts = [(m.chunk.data, m.chunk.count) for m in msgs]
            return list(stub.Step(iter([head("lookup.evaluate")]
                                       + lookup_kit.binding(key, job_id, PS, epoch, parts) + msgs), timeout=10))
        return head, evaluate

    def chunk(seq, data, count, last=True):
        return lookup_kit.chunk("in", seq, data, count, last)

    point = bytes([9]) + bytes(31)
    head, evaluate = admitted_job()
    good = evaluate([chunk(0, point, 1)])
    assert sum(m.chunk.count for m in good if m.WhichOneof("kind") == "chunk") == 1
    with pytest.raises(grpc.RpcError) as err:   # no second evaluation for the same job
        evaluate([chunk(0, point, 1)])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    list(stub.Step(iter([head("job.cleanup")]), timeout=10))
    for msgs in ([chunk(0, point + b"\x00", 1)], [chunk(0, bytes(32), 1)], [chunk(0, point * 2, 0)],
                 [chunk(0, point, 1, last=False)], [chunk(0, point, 1, last=False), chunk(0, point, 1)]):
        head, evaluate = admitted_job()
        with pytest.raises(grpc.RpcError) as err:
            evaluate(msgs)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        list(stub.Step(iter([head("job.cleanup")]), timeout=10))
    _, rows = lookup(analyst, "vehicles", tmp_path / "after.csv")
    check_exact(rows, VEHICLE_IDS)
