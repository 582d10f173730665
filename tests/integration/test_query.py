"""Federated queries (``query`` jobs) through real servers, against SQLite on the plaintext.

A federation of its own (coordinator + civil_affairs, tax, public_security, housing) with the
integration city imported, and the sandbox's query grants (``pc_client.sandbox.query_grants``)
appended to each provider's policy. Every answer is compared with the same SQL run by SQLite on
the plaintext CSVs (identifiers normalised as the nodes do, money as integer cents), with the
same suppression: groups with fewer distinct subjects than the minimum are omitted.
"""
from __future__ import annotations

import csv
import json
import re
import sqlite3
from decimal import ROUND_HALF_UP, Decimal

import grpc
import pytest
from pc_client.cli import main as cli_main
from pc_client.sandbox import query_grants

from pc_common import certs
from pc_node.admin import grants_toml
from tests.conftest import norm

REQ = "civil_affairs"
AGENCIES = [REQ, "tax", "public_security", "housing"]

JOIN_WAGES = ("SELECT a.district AS district, COUNT(*) AS n, COUNT(DISTINCT a.id_number) AS people, "
              "SUM(w.monthly_income) AS total, AVG(w.monthly_income) AS mean FROM civil_affairs.applicants a "
              "JOIN tax.wages w ON a.id_number = w.id_number WHERE w.monthly_income >= 1000 GROUP BY a.district")
CARS = ("SELECT a.district, COUNT(*) FROM civil_affairs.applicants a WHERE EXISTS (SELECT 1 FROM "
        "public_security.vehicles v WHERE v.id_number = a.id_number AND v.vehicle_type <> 'motorcycle') "
        "GROUP BY a.district")
NO_HOME = ("SELECT a.district AS d, COUNT(DISTINCT a.id_number) AS n FROM civil_affairs.applicants a "
           "WHERE NOT EXISTS (SELECT 1 FROM housing.properties p WHERE p.id_number = a.id_number AND "
           "p.usage = 'residential') GROUP BY a.district")
PER_HOUSEHOLD = ("SELECT a.household_id, COUNT(*) AS n FROM civil_affairs.applicants a JOIN tax.wages w "
                 "ON a.id_number = w.id_number GROUP BY a.household_id")
BY_TYPE = ("SELECT a.district AS district, v.vehicle_type AS type, COUNT(*) AS n, COUNT(DISTINCT a.id_number) AS "
           "people FROM civil_affairs.applicants a JOIN public_security.vehicles v ON a.id_number = v.id_number "
           "GROUP BY a.district, v.vehicle_type")
TYPE_FIRST = ("SELECT v.vehicle_type, a.district, COUNT(*) FROM civil_affairs.applicants a JOIN "
              "public_security.vehicles v ON a.id_number = v.id_number WHERE a.household_id >= 'H0000040' "
              "GROUP BY v.vehicle_type, a.district")
CATEGORIES = ["car", "motorcycle", "truck", "van"]          # "van": declared, never present (empty groups)
QUERIES = [JOIN_WAGES, CARS, NO_HOME, PER_HOUSEHOLD, BY_TYPE, TYPE_FIRST]


@pytest.fixture(scope="module")
def qfed(new_federation, small_city, tmp_path_factory):
    city, _ = small_city(120, 5)
    fed = new_federation("query", AGENCIES, city)
    # vehicle_type declares its categories: a provider GROUP BY column (one-hot under encryption)
    folder = tmp_path_factory.mktemp("vehicles_categories")
    (folder / "vehicles.csv").write_bytes((city / "public_security" / "vehicles.csv").read_bytes())
    meta = (city / "public_security" / "vehicles.toml").read_text(encoding="utf-8")
    assert "[columns.vehicle_type]\n" in meta
    meta = re.sub(r"(?m)^categories = .*\n", "", meta)      # the city's own declaration, replaced
    meta = meta.replace("[columns.vehicle_type]\n", "[columns.vehicle_type]\ncategories = %s\n" % json.dumps(CATEGORIES))
    (folder / "vehicles.toml").write_text(meta, encoding="utf-8")
    fed.import_csv("public_security", folder / "vehicles.csv", replace=True)
    for agency in AGENCIES[1:]:
        path = fed.root / agency / "policy.toml"
        extra = grants_toml(query_grants(agency, QUERIES, {}))
        fed.write_policy(agency, path.read_text(encoding="utf-8") + "\n" + extra)
    return fed, city


CITY_TABLES = [("civil_affairs", "applicants", ()), ("tax", "wages", ("monthly_income",)),
               ("public_security", "vehicles", ()), ("housing", "properties", ("area_m2",))]


def plaintext_db(city, tables=CITY_TABLES) -> sqlite3.Connection:
    """The plaintext city in SQLite: identifiers normalised, money (the named columns) in integer cents."""
    con = sqlite3.connect(":memory:")
    for agency, ds, money in tables:
        with open(city / agency / f"{ds}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        cols = list(rows[0])
        con.execute(f"ATTACH ':memory:' AS {agency}") if agency not in [r[1] for r in con.execute(
            "PRAGMA database_list")] else None
        con.execute(f"CREATE TABLE {agency}.{ds} ({', '.join(cols)})")
        for r in rows:
            vals = [norm(r[c]) if c == "id_number" else
                    (int((Decimal(r[c]) * 100).to_integral_value()) if c in money and r[c] != "" else r[c])
                    for c in cols]
            con.execute(f"INSERT INTO {agency}.{ds} VALUES ({', '.join('?' * len(cols))})", vals)
    return con


@pytest.fixture(scope="module")
def db(qfed):
    """The plaintext city of the module's federation (``qfed``) in SQLite."""
    return plaintext_db(qfed[1])


def _run(fed, sql, tmp_path, **kw):
    with fed.client(f"analyst@{REQ}") as c:
        return c.query(sql, out=tmp_path / "q.csv", **kw)


def test_join_counts_sums_and_averages_equal_sqlite(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, JOIN_WAGES, tmp_path)
    header = (tmp_path / "q.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "district,n,people,total,mean"
    sql = ("SELECT a.district, COUNT(*), COUNT(DISTINCT a.id_number), SUM(w.monthly_income), "
           "SUM(w.monthly_income) || ',' || COUNT(*) FROM civil_affairs.applicants a JOIN tax.wages w "
           "ON a.id_number = w.id_number WHERE w.monthly_income >= 100000 GROUP BY a.district")
    cur = db.execute(sql)
    expected = []
    for d, n, people, total, avg in cur.fetchall():
        if people < 5:
            continue
        s, cnt = (int(x) for x in avg.split(","))
        mean = (Decimal(s) / Decimal(cnt)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        expected.append({"district": d, "n": str(n), "people": str(people),
                         "total": str((Decimal(total) / 100).quantize(Decimal("0.01"))),
                         "mean": str((mean / 100).quantize(Decimal("0.01")))})
    expected.sort(key=lambda r: r["district"])
    assert res.records == expected and expected
    groups = db.execute("SELECT COUNT(DISTINCT a.district) FROM civil_affairs.applicants a JOIN tax.wages w ON "
                        "a.id_number = w.id_number WHERE w.monthly_income >= 100000").fetchone()[0]
    assert res.summary["released"] == len(expected)
    assert res.summary["released"] + res.summary["suppressed"] >= groups
    assert set(res.leakage) == {"coordinator", REQ, "tax"}


def test_exists_not_exists_and_a_group_exactly_at_the_threshold(qfed, db, tmp_path):
    fed, _ = qfed
    truth = db.execute("SELECT a.district, COUNT(*) FROM civil_affairs.applicants a WHERE EXISTS (SELECT 1 FROM "
                       "public_security.vehicles v WHERE v.id_number = a.id_number AND v.vehicle_type <> "
                       "'motorcycle') GROUP BY a.district ORDER BY a.district").fetchall()
    counts = sorted({n for _, n in truth})
    k = next((n for n in counts if n >= 5 and any(m < n for m in counts)), max(counts))
    res = _run(fed, CARS, tmp_path, min_group_size=k)
    got = [[r["district"], r["count(*)"]] for r in res.records]
    assert got == [[d, str(n)] for d, n in truth if n >= k]
    assert any(n == k for _, n in truth) and next(d for d, n in truth if n == k) in [g[0] for g in got]
    assert res.summary["suppressed"] == sum(1 for _, n in truth if n < k) + res.summary["groups"] - len(truth)

    res = _run(fed, NO_HOME, tmp_path)
    truth = db.execute("SELECT a.district, COUNT(DISTINCT a.id_number) FROM civil_affairs.applicants a WHERE NOT "
                       "EXISTS (SELECT 1 FROM housing.properties p WHERE p.id_number = a.id_number AND "
                       "p.usage = 'residential') GROUP BY a.district ORDER BY a.district").fetchall()
    assert [[r["d"], r["n"]] for r in res.records] == [[d, str(n)] for d, n in truth if n >= 5]


def test_small_groups_are_all_suppressed_and_never_decrypted(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, PER_HOUSEHOLD, tmp_path)
    # Households have at most a few wage records: every group is below 5 distinct subjects.
    assert res.records == []
    assert (tmp_path / "q.csv").read_text(encoding="utf-8") == "household_id,n\n"
    assert res.summary["released"] == 0 and res.summary["suppressed"] == res.summary["groups"] > 0


def test_hostile_sql_is_refused_with_invalid_argument_and_nothing_runs(qfed):
    fed, _ = qfed
    with fed.client(f"analyst@{REQ}") as c:
        before = len(c.jobs())
        for sql in ["SELECT COUNT(*) FROM civil_affairs.applicants a; DROP TABLE x",
                    "SELECT COUNT(*) FROM civil_affairs.applicants a WHERE a.id_number IN (SELECT 1)",
                    "SELECT COUNT(*) FROM tax.wages w JOIN civil_affairs.applicants a ON a.id_number = w.id_number",
                    "SELECT COUNT(*) FROM civil_affairs.applicants a JOIN tax.wages w ON a.id_number = w.id_number "
                    "ORDER BY a.district"]:
            with pytest.raises(grpc.RpcError) as exc:
                c.submit("query", {"sql": sql})
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, sql
        assert len(c.jobs()) == before


def test_columns_without_grant_are_permission_denied(qfed):
    fed, _ = qfed
    with fed.client(f"analyst@{REQ}") as c:
        before = len(c.jobs())
        seen = {j.job_id for j in c.jobs()}
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query", {"sql": "SELECT a.district, SUM(p.area_m2) FROM civil_affairs.applicants a JOIN "
                                      "housing.properties p ON a.id_number = p.id_number GROUP BY a.district"})
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "area_m2" in exc.value.details()
        assert len(c.jobs()) == before
        # Below the published minimum group size of the grant: refused by the coordinator's
        # validation, before any job exists (tests/integration/test_query_catalog_fields.py).
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query", {"sql": CARS, "min_group_size": 2})
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "minimum group size of at least 5" in exc.value.details()
        assert not [j for j in c.jobs() if j.job_id not in seen]


def test_cli_query_writes_the_results_file_and_refuses_hostile_sql(qfed, db, tmp_path, capsys):
    fed, _ = qfed
    files = certs.client_files(fed.certs, REQ, "analyst")
    conn = ["--coordinator", f"127.0.0.1:{fed.coordinator_port}", "--node", f"127.0.0.1:{fed.nodes[REQ][2]}",
            "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
    out = tmp_path / "cli.csv"
    rc = cli_main(["query", NO_HOME, "--out", str(out), "--json", *conn])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["state"] == "succeeded" and doc["out"] == str(out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "d,n" and len(lines) - 1 == doc["summary"]["released"] == len(doc["records"])
    rc = cli_main(["query", "SELECT COUNT(*) FROM civil_affairs.applicants a JOIN tax.wages w ON "
                   "a.id_number = w.id_number LIMIT 3", *conn])
    captured = capsys.readouterr()
    assert rc != 0 and captured.out == "" and "LIMIT is not supported" in captured.err
    assert "Traceback" not in captured.err


def assert_coordinator_files_hold_none(fed, needles: list[bytes]) -> None:
    """No file under the coordinator's data directory holds any of ``needles`` (identifiers, group
    values, results)."""
    cdir = fed.root / "coordinator"
    files = [p for p in cdir.rglob("*") if p.is_file()]
    assert files
    for p in files:
        content = p.read_bytes()
        leaked = [n for n in needles if n in content]
        assert not leaked, f"{p.relative_to(cdir)} holds {len(leaked)} identifier(s) or value(s)"


def test_the_coordinator_holds_no_identifier_group_value_or_result(qfed, db, tmp_path):
    fed, city = qfed
    res = _run(fed, JOIN_WAGES, tmp_path)
    assert res.records
    ids = [r[0] for r in db.execute("SELECT id_number FROM civil_affairs.applicants")]
    districts = sorted({r[0] for r in db.execute("SELECT district FROM civil_affairs.applicants")})
    totals = [r["total"] for r in res.records] + [r["mean"] for r in res.records]
    needles = [i.encode() for i in ids] + [d.encode() for d in districts] + [t.encode() for t in totals]
    assert_coordinator_files_hold_none(fed, needles)
    with fed.client(f"analyst@{REQ}") as c:
        job = c.job(res.job_id)
    summary = json.loads(job.summary_json)
    assert "released" not in summary and "suppressed" not in summary
    for text in (job.summary_json, job.leakage_json):
        assert not any(n.decode() in text for n in needles)
    # The requester's node keeps the results (encrypted at rest); the provider does not.
    assert fed.runtime(REQ).store.has_blob("results", res.job_id)
    assert not fed.runtime("tax").store.has_blob("results", res.job_id)


def test_provider_group_by_on_declared_categories_equals_sqlite(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, BY_TYPE, tmp_path)
    truth = db.execute("SELECT a.district, v.vehicle_type, COUNT(*), COUNT(DISTINCT a.id_number) FROM "
                       "civil_affairs.applicants a JOIN public_security.vehicles v ON a.id_number = v.id_number "
                       "GROUP BY a.district, v.vehicle_type ORDER BY a.district, v.vehicle_type").fetchall()
    expected = [{"district": d, "type": t, "n": str(n), "people": str(p)} for d, t, n, p in truth if p >= 5]
    assert res.records == expected and expected
    assert any(p < 5 for *_, p in truth)                     # some groups are suppressed
    own_groups = db.execute("SELECT COUNT(DISTINCT district) FROM civil_affairs.applicants").fetchone()[0]
    assert res.summary["groups"] == own_groups * len(CATEGORIES)   # requester group × category, empty ones too
    assert res.summary["released"] == len(expected)

    # The provider column first in GROUP BY: sorted by it first; a WHERE on the requester's side.
    res = _run(fed, TYPE_FIRST, tmp_path)
    truth = db.execute("SELECT v.vehicle_type, a.district, COUNT(*), COUNT(DISTINCT a.id_number) FROM "
                       "civil_affairs.applicants a JOIN public_security.vehicles v ON a.id_number = v.id_number "
                       "WHERE a.household_id >= 'H0000040' GROUP BY v.vehicle_type, a.district "
                       "ORDER BY v.vehicle_type, a.district").fetchall()
    expected = [[t, d, str(n)] for t, d, n, p in truth if p >= 5]
    assert [[r["vehicle_type"], r["district"], r["count(*)"]] for r in res.records] == expected
    assert expected


def test_provider_group_by_needs_the_group_by_grant_and_declared_categories(qfed):
    fed, _ = qfed
    with fed.client(f"analyst@{REQ}") as c:
        before = len(c.jobs())
        with pytest.raises(grpc.RpcError) as exc:       # plate: no grant at all
            c.submit("query", {"sql": "SELECT v.plate, COUNT(*) FROM civil_affairs.applicants a JOIN "
                                      "public_security.vehicles v ON a.id_number = v.id_number GROUP BY v.plate"})
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "plate as group_by" in exc.value.details()
        assert len(c.jobs()) == before


def test_provider_group_by_with_dp_adds_noise_per_requester_group_and_category(qfed, db, tmp_path, monkeypatch):
    from tests.integration.test_query_dp import ConstantSource
    from pc_node.secure_agg import dp_noise
    fed, _ = qfed
    monkeypatch.setattr(dp_noise, "fresh_source", lambda: ConstantSource(1))     # total noise +2 per group
    res = _run(fed, BY_TYPE, tmp_path, epsilon=0.8)
    truth = db.execute("SELECT a.district, v.vehicle_type, COUNT(*), COUNT(DISTINCT a.id_number) FROM "
                       "civil_affairs.applicants a JOIN public_security.vehicles v ON a.id_number = v.id_number "
                       "GROUP BY a.district, v.vehicle_type ORDER BY a.district, v.vehicle_type").fetchall()
    expected = [{"district": d, "type": t, "n": str(n + 2), "people": str(p + 2)} for d, t, n, p in truth if p + 2 >= 5]
    assert res.records == expected and res.summary["epsilon"] == 0.8
    # Empty (district, "van") groups have a noisy count of 2 < 5: suppressed, never shown.
    assert all(r["type"] != "van" for r in res.records)
