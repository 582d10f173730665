"""Federated queries over several provider agencies (a JOIN at one, EXISTS / NOT EXISTS at
others, or semi-joins only) through real servers, against SQLite on the plaintext. They run
under Paillier (docs/query.md, "Several provider agencies"): each further agency selects the main
provider's answers between the coordinator's masks, re-randomised.

The federation is test_query.py's shape (coordinator + civil_affairs, tax, public_security,
housing; the integration city) with the sandbox's grants for this file's queries. SQLite runs the
same SQL text (EXISTS included) on the plaintext, money as integer cents; groups with fewer
distinct subjects than the minimum are omitted, as the federation does.
"""
from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

import grpc
import numpy as np
import pytest
from pc_client.sandbox import query_grants
from pc_client.sdk import JobFailed

from pc_node.admin import grants_toml
from pc_node.secure_agg import dp_noise
from tests.integration.test_query import AGENCIES, REQ, assert_coordinator_files_hold_none, plaintext_db

CARS_EXCEPT_MOTORCYCLES = ("EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = a.id_number "
                           "AND v.vehicle_type <> 'motorcycle')")
NO_RESIDENCE = ("NOT EXISTS (SELECT 1 FROM housing.properties p WHERE p.id_number = a.id_number AND "
                "p.usage = 'residential')")
JOIN_EXISTS = ("SELECT a.district AS district, COUNT(*) AS n, COUNT(DISTINCT a.id_number) AS people, "
               "SUM(w.monthly_income) AS total, AVG(w.monthly_income) AS mean FROM civil_affairs.applicants a "
               f"JOIN tax.wages w ON a.id_number = w.id_number WHERE w.employer <> 'self' AND {CARS_EXCEPT_MOTORCYCLES} "
               "GROUP BY a.district")
JOIN_NOT_EXISTS = ("SELECT a.district AS district, COUNT(*) AS n, COUNT(DISTINCT a.id_number) AS people, "
                   "SUM(w.monthly_income) AS total, AVG(w.monthly_income) AS mean FROM civil_affairs.applicants a "
                   f"JOIN tax.wages w ON a.id_number = w.id_number WHERE {NO_RESIDENCE} GROUP BY a.district")
TWO_SEMIJOINS = ("SELECT a.district AS district, COUNT(*) AS n, COUNT(DISTINCT a.id_number) AS people FROM "
                 f"civil_affairs.applicants a WHERE {CARS_EXCEPT_MOTORCYCLES} AND {NO_RESIDENCE} GROUP BY a.district")
THREE_AGENCIES = JOIN_EXISTS.replace("GROUP BY", f"AND {NO_RESIDENCE} GROUP BY")
TYPES_WITH_WAGES = ("SELECT a.district AS district, v.vehicle_type AS type, COUNT(*) AS n, COUNT(DISTINCT "
                    "a.id_number) AS people FROM civil_affairs.applicants a JOIN public_security.vehicles v ON "
                    "a.id_number = v.id_number WHERE EXISTS (SELECT 1 FROM tax.wages w WHERE w.id_number = "
                    "a.id_number AND w.employer <> 'self') GROUP BY a.district, v.vehicle_type")
NOBODY = ("SELECT a.district AS district, COUNT(*) AS n FROM civil_affairs.applicants a JOIN tax.wages w ON "
          "a.id_number = w.id_number WHERE w.employer <> 'self' AND EXISTS (SELECT 1 FROM public_security.vehicles v "
          "WHERE v.id_number = a.id_number AND v.vehicle_type = 'hovercraft') GROUP BY a.district")
QUERIES = [JOIN_EXISTS, JOIN_NOT_EXISTS, TWO_SEMIJOINS, NOBODY, THREE_AGENCIES, TYPES_WITH_WAGES]


@pytest.fixture(scope="module")
def qfed(new_federation, small_city):
    city, _ = small_city(120, 5)
    fed = new_federation("query_multi", AGENCIES, city)
    for agency in AGENCIES[1:]:
        path = fed.root / agency / "policy.toml"
        extra = grants_toml(query_grants(agency, QUERIES, {}))
        fed.write_policy(agency, path.read_text(encoding="utf-8") + "\n" + extra)
    return fed, city


@pytest.fixture(scope="module")
def db(qfed):
    return plaintext_db(qfed[1])


def _run(fed, sql, tmp_path, **kw):
    with fed.client(f"analyst@{REQ}") as c:
        return c.query(sql, out=tmp_path / "q.csv", **kw)


def _two(cents) -> str:
    return str((Decimal(cents) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _sqlite(db, sql: str, k: int = 5, noise: int = 0) -> list[dict]:
    """The same SQL in SQLite (AVG as SUM / COUNT(*) in cents, rounded half away from zero);
    groups with fewer than ``k`` distinct subjects (plus ``noise``) omitted."""
    names = [c[0] for c in db.execute(sql).description]
    out = []
    for row in db.execute(sql).fetchall():
        rec = dict(zip(names, row))
        if rec.get("people", rec.get("n")) + noise < k:
            continue
        if "mean" in rec:
            rec["mean"] = _two((Decimal(rec["total"]) / Decimal(rec["n"])).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        if "total" in rec:
            rec["total"] = _two(rec["total"])
        out.append({key: str(v + noise) if key in ("n", "people") else str(v) for key, v in rec.items()})
    return sorted(out, key=lambda r: tuple(r.get(k, "") for k in ("district", "usage", "type")))


def test_a_join_at_one_agency_and_exists_at_another_equals_sqlite(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, JOIN_EXISTS, tmp_path)
    expected = _sqlite(db, JOIN_EXISTS)
    assert res.records == expected and expected
    # The semi-join changes the answer: without it SQLite gives other counts.
    assert _sqlite(db, JOIN_EXISTS.replace(f" AND {CARS_EXCEPT_MOTORCYCLES}", "")) != expected
    assert set(res.leakage) == {"coordinator", REQ, "tax", "public_security"}
    assert "re-randomised" in " ".join(res.leakage["public_security"])
    with fed.client(f"analyst@{REQ}") as c:
        assert json.loads(c.job(res.job_id).summary_json)["he"] == "paillier"


def test_a_join_and_not_exists_at_a_third_agency_equals_sqlite(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, JOIN_NOT_EXISTS, tmp_path)
    expected = _sqlite(db, JOIN_NOT_EXISTS)
    assert res.records == expected and expected
    assert set(res.leakage) == {"coordinator", REQ, "tax", "housing"}


def test_two_semijoins_at_two_agencies_and_a_group_exactly_at_the_threshold(qfed, db, tmp_path):
    fed, _ = qfed
    people = sorted({r["people"] for r in _sqlite(db, TWO_SEMIJOINS, 0)}, key=int)
    k = next(int(c) for c in people if int(c) >= 5 and int(people[0]) < int(c))
    res = _run(fed, TWO_SEMIJOINS, tmp_path, min_group_size=k)
    expected = _sqlite(db, TWO_SEMIJOINS, k)
    assert res.records == expected and any(r["people"] == str(k) for r in expected)
    assert res.summary["released"] == len(expected)
    assert res.summary["suppressed"] == res.summary["groups"] - len(expected) > 0


def test_three_provider_agencies_equal_sqlite(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, THREE_AGENCIES, tmp_path)
    expected = _sqlite(db, THREE_AGENCIES)
    assert res.records == expected and expected
    assert expected != _sqlite(db, JOIN_EXISTS)
    assert set(res.leakage) == {"coordinator", REQ, "tax", "public_security", "housing"}


def test_a_provider_group_by_with_a_further_agency_equals_sqlite(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, TYPES_WITH_WAGES, tmp_path)
    expected = _sqlite(db, TYPES_WITH_WAGES)
    assert res.records == expected and expected


def test_groups_emptied_by_the_other_agency_are_suppressed(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, NOBODY, tmp_path)
    # tax alone matches plenty of applicants per district; public_security keeps no slot, so every
    # group's packs are encryptions of zero and every group is suppressed.
    assert _sqlite(db, NOBODY.replace("= 'hovercraft'", "<> 'hovercraft'"))
    assert res.records == [] and res.summary["released"] == 0 and res.summary["suppressed"] == res.summary["groups"]
    assert (tmp_path / "q.csv").read_text(encoding="utf-8") == "district,n\n"


class _Constant:
    """Every noise share is ``value``; the main provider and the coordinator add one each."""

    def __init__(self, value: int):
        self.value = value

    def share(self, scale, parties, size):
        assert parties == 2 and scale > 0
        return np.full(size, self.value, dtype=np.int64)


def test_dp_with_two_providers_adds_the_noise_once_and_charges_both_ledgers(qfed, db, tmp_path, monkeypatch):
    fed, _ = qfed
    monkeypatch.setattr(dp_noise, "fresh_source", lambda: _Constant(1))       # total noise +2 per group
    spent = {(a, ds): fed.runtime(a).governance.epsilon_spent(REQ, ds, 86400)
             for a, ds in (("public_security", "vehicles"), ("housing", "properties"))}
    res = _run(fed, TWO_SEMIJOINS, tmp_path, epsilon=0.5)
    assert res.records == _sqlite(db, TWO_SEMIJOINS, noise=2) and res.records
    assert res.summary["epsilon"] == 0.5
    for (a, ds), before in spent.items():
        assert fed.runtime(a).governance.epsilon_spent(REQ, ds, 86400) == pytest.approx(before + 0.5), a


def test_a_column_without_grant_at_the_other_agency_is_refused_and_nothing_runs(qfed):
    fed, _ = qfed
    audits = {a: len(fed.runtime(a).audit.entries()) for a in AGENCIES}
    with fed.client(f"analyst@{REQ}") as c:
        before = len(c.jobs())
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query", {"sql": JOIN_EXISTS.replace("v.vehicle_type <> 'motorcycle'", "v.plate <> 'X'")})
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "plate as predicate" in exc.value.details()
        with pytest.raises((grpc.RpcError, JobFailed, ValueError)) as exc:     # --private: one provider agency
            c.query(JOIN_EXISTS, private=True)
        assert "one provider agency" in str(exc.value)
        with pytest.raises(grpc.RpcError) as exc:       # a sum of the requester's own column: refused
            c.submit("query", {"sql": JOIN_EXISTS.replace("SUM(w.monthly_income) AS total", "SUM(a.age) AS total")})
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "own columns" in exc.value.details()
        assert len(c.jobs()) == before
    new = fed.runtime(REQ).audit.entries()[audits[REQ]:]
    assert not [e["action"] for e in new if e["action"].startswith("query.")], new
    assert {a: len(fed.runtime(a).audit.entries()) for a in AGENCIES[1:]} == {a: audits[a] for a in AGENCIES[1:]}


def test_the_coordinator_holds_no_identifier_or_value(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, JOIN_EXISTS, tmp_path)
    assert res.records
    ids = [r[0] for r in db.execute("SELECT id_number FROM civil_affairs.applicants")]
    districts = sorted({r[0] for r in db.execute("SELECT district FROM civil_affairs.applicants")})
    values = [r["total"] for r in res.records] + [r["mean"] for r in res.records]
    needles = [i.encode() for i in ids] + [d.encode() for d in districts] + [v.encode() for v in values]
    assert_coordinator_files_hold_none(fed, needles)
    with fed.client(f"analyst@{REQ}") as c:
        job = c.job(res.job_id)
    summary = json.loads(job.summary_json)
    assert "released" not in summary and summary["providers"] == ["tax", "public_security"]
    for text in (job.summary_json, job.leakage_json):
        assert not any(n.decode() in text for n in needles)


def test_what_the_requester_decrypts_and_what_each_further_agency_handles(qfed, db, tmp_path, monkeypatch):
    """Recorded through the real servers (nodes in-process): the requester decrypts exactly one
    ciphertext per pack, one value per group — never a slot's — and every digit of it is masked
    (none is a true group total, each far above them); no further agency ever holds one of the
    main provider's ciphertexts (the coordinator masks them first), and what each returns holds
    none of the ciphertexts it received."""
    from pc_node.secure_agg import query_paillier as qp
    from pc_node.secure_agg.paillier import PaillierBackend
    decrypted, raw, selections = [], [], []
    real_decrypt, real_select, real_packs = PaillierBackend.decrypt, qp.select, qp.encrypt_packs

    def decrypt(self, secret, cv):
        out = real_decrypt(self, secret, cv)
        decrypted.append((cv.length, out.tolist()))
        return out

    def encrypt_packs(*a):
        out = real_packs(*a)
        raw.extend(set(cv.cts) for cv in out)
        return out

    def select(backend, packs, keep, pub):
        out, kept = real_select(backend, packs, keep, pub)
        selections.append(([set(p.cts) for p in packs], [set(o.cts) for o in out]))
        return out, kept
    monkeypatch.setattr(PaillierBackend, "decrypt", decrypt)
    monkeypatch.setattr(qp, "select", select)
    monkeypatch.setattr(qp, "encrypt_packs", encrypt_packs)
    fed, _ = qfed
    res = _run(fed, THREE_AGENCIES, tmp_path)
    assert res.records == _sqlite(db, THREE_AGENCIES)
    groups = res.summary["groups"]
    assert [length for length, _ in decrypted] == [groups]     # one pack: threshold, subjects, rows, sum
    digits = qp.unpack(decrypted[0][1], 4)
    names = [c[0] for c in db.execute(THREE_AGENCIES).description]
    truths = {int(v) for row in db.execute(THREE_AGENCIES).fetchall()
              for k, v in zip(names, row) if k in ("n", "people", "total")}
    for column in digits:
        assert not truths & set(column) and min(column) > 1 << 40
    assert len(raw) == 1 and len(selections) == 2                  # tax's pack; public_security, then housing
    for held, returned in selections:
        assert not raw[0] & held[0]
        assert not any(h & r for h, r in zip(held, returned))
    assert not selections[0][1][0] & selections[1][0][0]           # re-masked between the two agencies


def test_each_provider_must_name_the_others_in_query_with_and_nothing_runs(qfed):
    """Nothing proves that a provider answers as the protocol asks, so each provider's grant
    names the agencies its data may meet in one query (``query_with``); without it, the first
    admission round refuses (PERMISSION_DENIED) and no provider evaluates anything."""
    import re
    fed, _ = qfed
    path = fed.root / "housing" / "policy.toml"
    original = path.read_text(encoding="utf-8")
    fed.write_policy("housing", re.sub(r"(?m)^query_with = .*\n", "", original))
    audits = {a: len(fed.runtime(a).audit.entries()) for a in AGENCIES}
    try:
        with fed.client(f"analyst@{REQ}") as c:
            with pytest.raises(grpc.RpcError) as exc:
                c.submit("query", {"sql": THREE_AGENCIES})
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "query_with" in exc.value.details() and "tax" in exc.value.details()
        for a in AGENCIES:
            new = [e["action"] for e in fed.runtime(a).audit.entries()[audits[a]:]]
            assert not [x for x in new if x in ("query.prepare", "query.evaluate")], (a, new)
    finally:
        fed.write_policy("housing", original)
