"""``Node.QuotaUsage`` (``Federation.quota_usage``, ``pc policy quota``, the console's quota chart):
a provider's data officer sees every grant's quota limits and the jobs and subjects counted in
the current hour and day — after a verification, exactly one job and its subjects more — and
the ε spent and left of a budgeting grant. Nobody else may ask: an analyst, or an officer of
another agency, is refused with PERMISSION_DENIED."""
from __future__ import annotations

import json
import types

import grpc
import pytest

from pc_client.cli import main
from pc_common import certs, tls
from pc_common.pb import common_pb2, node_pb2_grpc
from pc_node.governance import Governance
from pc_node.policy import Policy
from pc_node.quota_report import quota_report

from tests.conftest import REQUESTER, coordinator_address, node_address, subset_subjects

PROVIDER = "public_security"        # one of the providers the gaoling rule reads


def _used(report, dataset_requester=REQUESTER) -> dict[str, dict[str, tuple[int, int]]]:
    """dataset -> counter -> (used, limit), for the requester's grants."""
    return {g.dataset: {c.name: (c.used, c.limit) for c in g.counters}
            for g in report.grants if g.requester == dataset_requester}


def test_a_verification_is_counted_once_with_its_subjects(fed, city, tmp_path):
    city_dir, _ = city
    subjects = tmp_path / "subjects.csv"
    rows = subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 3)
    with fed.client(f"officer@{PROVIDER}") as officer:
        before = officer.quota_usage()
        assert before.node_id == PROVIDER and before.as_of
        assert before.grants and all(len(g.counters) == 4 for g in before.grants)
        with fed.client(f"analyst@{REQUESTER}") as analyst:
            res = analyst.verify(city_dir / "rules" / "gaoling.toml", subjects, out=tmp_path / "out.csv")
        assert res.rows == len(rows)
        after = officer.quota_usage()
    was, now = _used(before), _used(after)
    assert was and set(was) == set(now)
    for dataset in now:
        for window in ("hour", "day"):
            assert now[dataset][f"jobs_per_{window}"][0] == was[dataset][f"jobs_per_{window}"][0] + 1
            assert now[dataset][f"subjects_per_{window}"][0] == was[dataset][f"subjects_per_{window}"][0] + len(rows)
        assert all(limit > 0 for _, limit in now[dataset].values())
    text = str(after)
    assert not any(r["id_number"] in text for r in rows)          # counts only


def test_pc_policy_quota_prints_the_counters(fed, capsys):
    files = certs.client_files(fed.certs, PROVIDER, "officer")
    assert main(["policy", "quota", "--coordinator", coordinator_address(fed), "--node", node_address(fed, PROVIDER),
                 "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["node"] == PROVIDER
    grant = next(g for g in doc["grants"] if g["requester"] == REQUESTER)
    assert set(grant["quota"]) == {"jobs_per_hour", "jobs_per_day", "subjects_per_hour", "subjects_per_day"}
    assert all(set(v) == {"limit", "used"} for v in grant["quota"].values())
    assert main(["policy", "quota", "--coordinator", coordinator_address(fed), "--node", node_address(fed, PROVIDER),
                 "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca),
                 "--requester", REQUESTER]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"node {PROVIDER}") and len(lines) == 1 + len(doc["grants"]) - sum(
        g["requester"] != REQUESTER for g in doc["grants"])
    assert all(f"<- {REQUESTER} (" in ln and "jobs_per_hour " in ln for ln in lines[1:])


@pytest.mark.parametrize("user, node", [(f"analyst@{PROVIDER}", PROVIDER), (f"analyst@{REQUESTER}", REQUESTER),
                                        (f"officer@{REQUESTER}", PROVIDER)])
def test_only_an_officer_of_the_nodes_agency_may_ask(fed, user, node):
    name, agency = user.split("@")
    channel = tls.secure_channel(node_address(fed, node), certs.client_files(fed.certs, agency, name), node)
    try:
        with pytest.raises(grpc.RpcError) as err:
            node_pb2_grpc.NodeStub(channel).QuotaUsage(common_pb2.Empty(), timeout=10)
    finally:
        channel.close()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    if name == "officer":
        assert f"only clients of agency '{node}'" in err.value.details()


POLICY = """
[[grants]]
dataset = "income"
requester = "civil_affairs"
purposes = ["statistics"]
epsilon = 0.5
epsilon_budget = 2
evaluation_period = "day"
[grants.columns]
id_number = "join_key"
[grants.quota]
jobs_per_hour = 7
"""


def test_the_epsilon_ledger_shows_spent_and_left(tmp_path):
    (tmp_path / "policy.toml").write_text(POLICY)
    gov = Governance(tmp_path / "governance.db", clock=lambda: 1_800_000_000.0)
    try:
        rt = types.SimpleNamespace(node_id="tax", governance=gov, policy=Policy(tmp_path / "policy.toml"))
        assert gov.charge_epsilon("job1#epsilon", "civil_affairs", 0.5, [("income", 2.0, 86400)], 1e10)
        assert gov.charge("job1#charged", "civil_affairs", 40, {"jobs_per_hour": 7}, 1e10)
        (g,) = quota_report(rt).grants
    finally:
        gov.close()
    assert g.epsilon_budgeted and g.epsilon_budget == 2 and g.epsilon_spent == pytest.approx(0.5)
    assert g.epsilon_left == pytest.approx(1.5)
    counters = {c.name: (c.used, c.limit) for c in g.counters}
    assert counters["jobs_per_hour"] == (1, 7) and counters["subjects_per_day"][0] == 40
    assert not g.suspended and g.evaluation_period == "day"
