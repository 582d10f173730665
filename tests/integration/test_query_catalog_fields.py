"""The grants' disclosure demands and the columns' categories in the published catalog, and the
early refusals they allow (docs/query.md).

A federation of its own (coordinator + civil_affairs, tax, housing) with the integration city:
tax's only grant needs groups of at least 8, housing's demands DP (ε ≤ 0.5 per query, a budget).
A query asking less is refused by the client before preparing, and by the coordinator's
validation before any admission round reaches a provider (``admit.authorise`` is counted).
"""
from __future__ import annotations

import json

import grpc
import pytest

from pc_common import certs
from pc_common.errors import PermissionDenied
from pc_node.steps import admit

REQ = "civil_affairs"
AGENCIES = [REQ, "tax", "housing"]
GRANT = """[[grants]]
dataset = "{dataset}"
requester = "civil_affairs"
purposes = ["data_matching"]
max_evaluations_per_subject = 1000
{extra}
[grants.columns]
id_number = "join_key"
"""
WAGES = ("SELECT a.district AS district, COUNT(*) AS n FROM civil_affairs.applicants a "
         "JOIN tax.wages w ON a.id_number = w.id_number GROUP BY a.district")
HOMES = ("SELECT a.district AS district, COUNT(*) AS n FROM civil_affairs.applicants a "
         "JOIN housing.properties p ON a.id_number = p.id_number GROUP BY a.district")


@pytest.fixture(scope="module")
def cfed(new_federation, small_city):
    city, _ = small_city(120, 5)
    fed = new_federation("query_catalog_fields", AGENCIES, city)
    fed.write_policy("tax", GRANT.format(dataset="wages", extra="min_group_size = 8"))
    fed.write_policy("housing", GRANT.format(dataset="properties", extra="epsilon = 0.5\nepsilon_budget = 100"))
    return fed


@pytest.fixture
def admissions(monkeypatch):
    """How often a provider ran its admission check (every ``job.admit`` calls ``authorise``)."""
    calls = []
    real = admit.authorise

    def counted(runtime, doc):
        calls.append(runtime.node_id)
        return real(runtime, doc)
    monkeypatch.setattr(admit, "authorise", counted)
    return calls


def _dataset(catalog, ref: str):
    return next(d for d in catalog.datasets if f"{d.agency}.{d.name}" == ref)


def _conn(fed) -> list[str]:
    files = certs.client_files(fed.certs, REQ, "analyst")
    return ["--coordinator", f"127.0.0.1:{fed.coordinator_port}", "--node", f"127.0.0.1:{fed.nodes[REQ][2]}",
            "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]


def test_the_catalog_publishes_group_size_epsilon_and_categories(cfed, capsys):
    from pc_client.cli import main as cli_main
    with cfed.client(f"analyst@{REQ}") as c:
        cat = c.catalog()
    (wages,), (homes,) = _dataset(cat, "tax.wages").grants, _dataset(cat, "housing.properties").grants
    assert wages.min_group_size == 8 and not wages.HasField("epsilon") and not wages.HasField("epsilon_budget")
    assert homes.min_group_size == 5 and homes.epsilon == 0.5 and homes.epsilon_budget == 100
    usage = next(col for col in _dataset(cat, "housing.properties").columns if col.name == "usage")
    assert list(usage.categories) == ["residential", "commercial"]

    assert cli_main(["catalog", *_conn(cfed)]) == 0
    text = capsys.readouterr().out
    assert "min group size 8" in text and "epsilon ≤ 0.5 per query; epsilon budget 100 per period" in text
    assert "categories: residential, commercial" in text
    assert cli_main(["catalog", "--json", *_conn(cfed)]) == 0
    doc = {f"{d['agency']}.{d['name']}": d for d in json.loads(capsys.readouterr().out)}
    assert doc["tax.wages"]["grants"][0]["min_group_size"] == 8
    assert "epsilon" not in doc["tax.wages"]["grants"][0]
    assert doc["housing.properties"]["grants"][0]["epsilon"] == 0.5
    assert doc["housing.properties"]["grants"][0]["epsilon_budget"] == 100
    assert {"name": "usage", "categories": ["residential", "commercial"]}.items() <= next(
        col for col in doc["housing.properties"]["columns"] if col["name"] == "usage").items()


@pytest.mark.parametrize("params, provider, message", [
    ({"sql": WAGES, "min_group_size": 5}, "tax", "needs a minimum group size of at least 8 (the query asks for 5)"),
    ({"sql": HOMES}, "housing", "demands differential privacy: run the query with --epsilon E (at most 0.5 per query)"),
])
def test_the_coordinator_refuses_before_any_admission_round(cfed, admissions, params, provider, message):
    audit = cfed.runtime(provider).audit
    before = len(audit.entries())
    with cfed.client(f"analyst@{REQ}") as c:
        jobs = len(c.jobs())
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query", params)            # past the client's own check: the coordinator's validation
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert exc.value.details() == f"this provider's grant {message}"
        assert len(c.jobs()) == jobs
    assert admissions == [] and len(audit.entries()) == before


def test_the_client_refuses_before_preparing_and_an_allowed_query_runs(cfed, admissions, tmp_path):
    requester_audit = cfed.runtime(REQ).audit
    before = len(requester_audit.entries())
    with cfed.client(f"analyst@{REQ}") as c:
        with pytest.raises(PermissionDenied, match="at least 8"):
            c.query(WAGES, min_group_size=7)
        with pytest.raises(PermissionDenied, match="--epsilon E"):
            c.query(HOMES)
        assert len(requester_audit.entries()) == before and admissions == []     # nothing prepared
        res = c.query(WAGES, out=tmp_path / "q.csv", min_group_size=8)
    assert res.state == "succeeded" and admissions and all(int(r["n"]) >= 8 for r in res.records)
