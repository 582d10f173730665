"""Differentially private federated queries (``--epsilon``) through real servers.

A federation of its own (coordinator + civil_affairs, tax) with the integration city; tax's
wages re-imported with per-subject bounds on ``monthly_income`` (0 … 20000) and a policy whose
only grant demands DP (ε ≤ 1 per query, a budget per day). The noise randomness is injected
(``dp_noise.fresh_source``, called by the provider and by the coordinator for their shares), so
answers are exact: SQLite's on the plaintext, clipped, plus the shares' sum.
"""
from __future__ import annotations

import csv
import sqlite3
from decimal import ROUND_HALF_UP, Decimal

import grpc
import numpy as np
import pytest
from pc_client.sdk import JobFailed

from pc_node.secure_agg import dp_noise
from tests.conftest import norm

REQ = "civil_affairs"
AGENCIES = [REQ, "tax"]
LOW, HIGH = 0, 2_000_000            # monthly_income bounds in cents
QUERY = ("SELECT a.district AS district, COUNT(*) AS n, COUNT(DISTINCT a.id_number) AS people, "
         "SUM(w.monthly_income) AS total, AVG(w.monthly_income) AS mean FROM civil_affairs.applicants a "
         "JOIN tax.wages w ON a.id_number = w.id_number GROUP BY a.district")
COUNTS = ("SELECT a.district AS district, COUNT(DISTINCT a.id_number) AS people FROM civil_affairs.applicants a "
          "JOIN tax.wages w ON a.id_number = w.id_number GROUP BY a.district")
POLICY = """[[grants]]
dataset = "wages"
requester = "civil_affairs"
purposes = ["data_matching"]
max_evaluations_per_subject = 1000
min_group_size = 1
epsilon = 1.0
epsilon_budget = {budget}
[grants.columns]
id_number = "join_key"
monthly_income = "aggregate"
"""
WAGES_META = """key_column = "id_number"
[columns.employer]
type = "text"
[columns.monthly_income]
type = "decimal"
min = 0
max = 20000
"""


class ConstantSource:
    """Every share is ``value``: with two noise-adding parties each aggregate gets 2·value."""

    def __init__(self, value: int):
        self.value = value

    def share(self, scale, parties, size):
        assert parties == 2 and scale > 0
        return np.full(size, self.value, dtype=np.int64)


@pytest.fixture(scope="module")
def dpfed(new_federation, small_city, tmp_path_factory):
    city, _ = small_city(120, 5)
    fed = new_federation("query_dp", AGENCIES, city)
    folder = tmp_path_factory.mktemp("wages_bounds")
    (folder / "wages.csv").write_bytes((city / "tax" / "wages.csv").read_bytes())
    (folder / "wages.toml").write_text(WAGES_META, encoding="utf-8")
    fed.import_csv("tax", folder / "wages.csv", replace=True)
    fed.write_policy("tax", POLICY.format(budget=100.0))
    return fed, city


@pytest.fixture(scope="module")
def truth(dpfed):
    """Per district (rows, distinct subjects, Σ per-subject clipped sums in cents), from SQLite."""
    _, city = dpfed
    con = sqlite3.connect(":memory:")
    for agency, ds in [("civil_affairs", "applicants"), ("tax", "wages")]:
        with open(city / agency / f"{ds}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        con.execute(f"CREATE TABLE {ds} ({', '.join(rows[0])})")
        con.executemany(f"INSERT INTO {ds} VALUES ({', '.join('?' * len(rows[0]))})",
                        [[norm(v) if c == "id_number" else
                          (int(Decimal(v or 0) * 100) if c == "monthly_income" else v) for c, v in r.items()]
                         for r in rows])
    out: dict[str, list[int]] = {}
    for district, _, n, total in con.execute(
            "SELECT a.district, a.id_number, COUNT(*), SUM(w.monthly_income) FROM applicants a JOIN wages w"
            " ON a.id_number = w.id_number GROUP BY a.district, a.id_number"):
        assert n <= dp_noise.DP_ROW_CAP
        g = out.setdefault(district, [0, 0, 0])
        g[0] += n
        g[1] += 1
        g[2] += min(max(total, LOW), HIGH)
    return out


def _query(fed, sql, tmp_path, **kw):
    with fed.client(f"analyst@{REQ}") as c:
        return c.query(sql, out=tmp_path / "q.csv", **kw)


def _spent(fed) -> float:
    return fed.runtime("tax").governance.epsilon_spent(REQ, "wages", 86400)


def _two(cents: Decimal) -> str:
    return str((cents / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def test_injected_noise_gives_exact_answers_and_the_threshold_is_on_the_noisy_count(dpfed, truth, tmp_path,
                                                                                   monkeypatch):
    fed, _ = dpfed
    monkeypatch.setattr(dp_noise, "fresh_source", lambda: ConstantSource(2))      # total noise +4
    before = _spent(fed)
    k = 8
    res = _query(fed, QUERY, tmp_path, epsilon=1.0, min_group_size=k)
    expected = []
    for d, (rows, people, total) in sorted(truth.items()):
        if people + 4 < k:              # decided on the noisy count
            continue
        mean = (Decimal(total + 4) / Decimal(rows + 4)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        expected.append({"district": d, "n": str(rows + 4), "people": str(people + 4),
                         "total": _two(Decimal(total + 4)), "mean": _two(mean)})
    assert res.records == expected and expected
    # Some group below k in truth is released because its noisy count reaches k.
    assert any(k - 4 <= people < k for _, people, _ in truth.values())
    assert res.summary["epsilon"] == 1.0
    assert _spent(fed) == pytest.approx(before + 1.0)
    assert "1 (discrete Laplace" in res.leakage["epsilon_spent"]


def test_a_grant_demanding_dp_refuses_a_query_without_epsilon_or_above_its_cap(dpfed):
    fed, _ = dpfed
    before = _spent(fed)
    with fed.client(f"analyst@{REQ}") as c:
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query", {"sql": COUNTS})
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "demands differential privacy" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query", {"sql": COUNTS, "epsilon": 1.5})
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 1 per query" in exc.value.details()
    assert _spent(fed) == before


def test_a_sum_without_column_bounds_is_refused(dpfed, tmp_path_factory):
    fed, city = dpfed
    folder = tmp_path_factory.mktemp("wages_nobounds")
    (folder / "wages.csv").write_bytes((city / "tax" / "wages.csv").read_bytes())
    (folder / "wages.toml").write_text(WAGES_META.replace("min = 0\nmax = 20000\n", ""), encoding="utf-8")
    fed.import_csv("tax", folder / "wages.csv", replace=True)
    before = _spent(fed)
    try:
        with fed.client(f"analyst@{REQ}") as c, pytest.raises((grpc.RpcError, JobFailed)) as exc:
            c.query(QUERY, epsilon=0.5)
        text = exc.value.details() if isinstance(exc.value, grpc.RpcError) else str(exc.value)
        assert "declares no min and max" in text
        assert _spent(fed) == before
    finally:
        (folder / "wages.toml").write_text(WAGES_META, encoding="utf-8")
        fed.import_csv("tax", folder / "wages.csv", replace=True)


def test_budget_exhaustion_is_resource_exhausted_and_nothing_runs(dpfed, tmp_path):
    fed, _ = dpfed
    spent = _spent(fed)
    fed.write_policy("tax", POLICY.format(budget=round(spent + 0.75, 6)))
    try:
        audit = fed.runtime("tax").audit
        evaluated = len([e for e in audit.entries() if e["action"] == "query.evaluate"])
        with fed.client(f"analyst@{REQ}") as c:
            seen = {j.job_id for j in c.jobs()}
            # Refused by the provider's ledger before it opens the subject list (query.evaluate's
            # first check; admission refuses it as well once admit.authorise calls admit_query).
            with pytest.raises((grpc.RpcError, JobFailed)) as exc:
                c.query(COUNTS, epsilon=1.0)
            if isinstance(exc.value, grpc.RpcError):
                assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                text = exc.value.details()
            else:
                text = str(exc.value)
            assert "privacy budget exhausted" in text and "0.75 of epsilon" in text and "asks 1" in text
            new = [j for j in c.jobs() if j.job_id not in seen]
            assert len(new) == 1 and new[0].state == "failed"
        assert _spent(fed) == pytest.approx(spent)
        assert len([e for e in audit.entries() if e["action"] == "query.evaluate"]) == evaluated
        res = _query(fed, COUNTS, tmp_path, epsilon=0.5)          # what is left still serves
        assert res.summary["epsilon"] == 0.5 and _spent(fed) == pytest.approx(spent + 0.5)
    finally:
        fed.write_policy("tax", POLICY.format(budget=100.0))


def test_the_differencing_attack_learns_only_what_the_noise_allows(dpfed, truth, tmp_path, monkeypatch,
                                                                  tmp_path_factory):
    """The same query on two populations that differ by one matched subject: with injected noise
    (+1 per party's share in the first run, −1 in the second; group numbers are opaque and drawn
    afresh per job, so seeded random noise would land on the victim's district by chance) the
    released difference is the true difference plus the noise, not 1 — the attacker's estimate
    is off by exactly what the noise added. The distinguishing advantage over many real draws is
    bounded per ε in tests/unit/test_query_dp.py."""
    fed, city = dpfed
    current = [ConstantSource(1)]
    monkeypatch.setattr(dp_noise, "fresh_source", lambda: current[0])
    first = {r["district"]: int(r["people"])
             for r in _query(fed, COUNTS, tmp_path, epsilon=1.0, min_group_size=1).records}
    with open(city / REQ / "applicants.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    wages = {norm(r["id_number"]) for r in csv.DictReader(open(city / "tax" / "wages.csv", encoding="utf-8"))}
    victim = next(r for r in rows if norm(r["id_number"]) in wages)
    folder = tmp_path_factory.mktemp("one_less")
    with open(folder / "applicants.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r is not victim)
    current[0] = ConstantSource(-1)
    try:
        fed.import_csv(REQ, folder / "applicants.csv", replace=True)
        second = {r["district"]: int(r["people"])
                  for r in _query(fed, COUNTS, tmp_path, epsilon=1.0, min_group_size=1).records}
    finally:
        fed.import_csv(REQ, city / REQ / "applicants.csv", replace=True)
    d = victim["district"]
    # The attacker's estimate of the victim's presence, first − second, is the truth (1) plus the
    # difference of the two runs' noise (+2 − (−2)), never the bare truth.
    assert first[d] - second[d] == 1 + 4


def test_with_dp_the_coordinator_still_holds_no_identifier_or_value(dpfed, tmp_path):
    fed, city = dpfed
    res = _query(fed, QUERY, tmp_path, epsilon=0.5, min_group_size=1)
    assert res.records
    with open(city / REQ / "applicants.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    needles = ({norm(r["id_number"]) for r in rows} | {r["district"] for r in rows}
               | {r[c] for r in res.records for c in ("total", "mean")})
    cdir = fed.root / "coordinator"
    files = [p for p in cdir.rglob("*") if p.is_file()]
    assert files
    for p in files:
        content = p.read_bytes()
        leaked = [n for n in needles if n.encode() in content]
        assert not leaked, f"{p.relative_to(cdir)} holds {len(leaked)} identifier(s) or value(s)"
    with fed.client(f"analyst@{REQ}") as c:
        job = c.job(res.job_id)
    for text in (job.summary_json, job.leakage_json):
        assert not any(n in text for n in needles)


def test_cli_epsilon_flag_signs_epsilon_and_reports_it(dpfed, capsys):
    from pc_client.cli import main as cli_main
    from pc_common import certs
    fed, _ = dpfed
    files = certs.client_files(fed.certs, REQ, "analyst")
    conn = ["--coordinator", f"127.0.0.1:{fed.coordinator_port}", "--node", f"127.0.0.1:{fed.nodes[REQ][2]}",
            "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
    before = _spent(fed)
    rc = cli_main(["query", COUNTS, "--epsilon", "0.25", "--min-group-size", "1", *conn])
    out = capsys.readouterr().out
    assert rc == 0 and "epsilon 0.25 spent" in out and "epsilon_spent: 0.25" in out
    assert _spent(fed) == pytest.approx(before + 0.25)
    rc = cli_main(["query", COUNTS, *conn])                   # the grant demands DP
    captured = capsys.readouterr()
    assert rc != 0 and "demands differential privacy" in captured.err and "Traceback" not in captured.err
