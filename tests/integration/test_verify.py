"""Eligibility verification end to end, compared with the plaintext oracle
(``pc_devkit.ground_truth``) verdict by verdict and reason by reason."""
from __future__ import annotations

import csv
import time
from concurrent import futures

import grpc
import pytest

from pc_client.sdk import JobFailed
from pc_devkit import ground_truth
from pc_common.errors import InvalidInput
from pc_rules.rules import load_rule

from tests.conftest import REQUESTER, read_csv, subset_subjects

RULES = ["dibao", "tekun", "linshi", "gaoling"]


@pytest.fixture(scope="module")
def results(fed, city, tmp_path_factory):
    """Run each rule once over all applicants (memoised); returns rows and the job result."""
    city_dir, _ = city
    out_dir = tmp_path_factory.mktemp("verdicts")
    cache: dict[str, tuple] = {}

    def run(rule_name: str):
        if rule_name not in cache:
            out = out_dir / f"{rule_name}.csv"
            with fed.client("analyst@" + REQUESTER) as c:
                res = c.verify(city_dir / "rules" / f"{rule_name}.toml", city_dir / "civil_affairs" / "applicants.csv",
                               out=out)
            cache[rule_name] = (res, *read_csv(out))
        return cache[rule_name]
    return run


def _truth(city_dir, rule_name, subjects=None):
    rule = load_rule(city_dir / "rules" / f"{rule_name}.toml")
    return rule, ground_truth.evaluate(rule, city_dir, subjects or city_dir / "civil_affairs" / "applicants.csv")


@pytest.mark.parametrize("rule_name", RULES)
def test_verdicts_match_ground_truth(results, city, rule_name):
    city_dir, _ = city
    res, header, rows = results(rule_name)
    rule, truth = _truth(city_dir, rule_name)
    expected_header = [rule.subject_column] + ([rule.group_column] if rule.group_column else []) + ["eligible"]
    if rule.reveal == "reasons":
        expected_header.append("failed")
    assert header == expected_header
    _, subjects = read_csv(city_dir / "civil_affairs" / "applicants.csv")
    assert len(rows) == len(truth) == len(subjects) == res.rows
    # One row per subject, in input order, with the identifier as given.
    assert [r[rule.subject_column] for r in rows] == [s["id_number"] for s in subjects]
    if rule.group_column:
        assert [r[rule.group_column] for r in rows] == [s[rule.group_column] for s in subjects]
    wrong = [i for i, (r, t) in enumerate(zip(rows, truth)) if r["eligible"] != ("true" if t["eligible"] else "false")]
    assert not wrong, f"{len(wrong)} wrong verdict(s), first at row {wrong[0] + 2}"
    if rule.reveal == "reasons":
        bad = [i for i, (r, t) in enumerate(zip(rows, truth)) if r["failed"] != ";".join(t["failed"])]
        assert not bad, f"{len(bad)} wrong reason(s), first at row {bad[0] + 2}"
    # The city is meant to have both outcomes; a rule that passes or fails everyone proves little.
    verdicts = {r["eligible"] for r in rows}
    assert verdicts == {"true", "false"}, verdicts
    assert res.summary["subjects"] == len(rows) and res.summary["rule"] == rule.id
    assert REQUESTER in res.leakage and "coordinator" in res.leakage


def test_edge_cases_hold(results, city):
    city_dir, summary = city
    _, _, rows = results("dibao")
    rule, truth = _truth(city_dir, "dibao")
    assert len(summary.edge_cases) >= 5, summary.edge_cases
    for name, case in summary.edge_cases.items():
        members = [r for r in rows if r["household_id"] == case["household_id"]]
        assert members, f"edge case {name}: household not among the applicants"
        want = "true" if case["eligible"] else "false"
        assert {r["eligible"] for r in members} == {want}, name
        oracle = [t for t in truth if t["household_id"] == case["household_id"]]
        assert oracle[0]["failed"] == case["failed"], name


def test_paillier_backend_on_a_small_file(fed, city, tmp_path):
    city_dir, _ = city
    subjects = tmp_path / "small.csv"
    subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 12)
    out = tmp_path / "paillier.csv"
    with fed.client("analyst@" + REQUESTER) as c:
        res = c.verify(city_dir / "rules" / "linshi.toml", subjects, out=out, he="paillier")
    assert res.summary["he"] == "paillier"
    _, rows = read_csv(out)
    _, truth = _truth(city_dir, "linshi", subjects)
    assert [(r["id_number"], r["eligible"], r["failed"]) for r in rows] == \
        [(t["id_number"], "true" if t["eligible"] else "false", ";".join(t["failed"])) for t in truth]


def test_subjects_without_group_column_are_refused(fed, city, tmp_path):
    city_dir, _ = city
    subjects = tmp_path / "nogroup.csv"
    _, rows = read_csv(city_dir / "civil_affairs" / "applicants.csv")
    with open(subjects, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id_number", "name"])
        w.writerows([r["id_number"], r["name"]] for r in rows[:5])
    with fed.client("analyst@" + REQUESTER) as c:
        before = len(c.jobs())
        with pytest.raises(InvalidInput, match="column 'household_id'.*not in the header"):
            c.verify(city_dir / "rules" / "dibao.toml", subjects)
        assert len(c.jobs()) == before


def test_invalid_subject_identifier_is_refused_by_the_node(fed, city, tmp_path):
    city_dir, _ = city
    _, rows = read_csv(city_dir / "civil_affairs" / "applicants.csv")
    subjects = tmp_path / "bad.csv"
    bad = rows[1]["id_number"][:17] + ("0" if rows[1]["id_number"][17] != "0" else "1")
    with open(subjects, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id_number", "household_id"])
        w.writerow([rows[0]["id_number"], "H1"])
        w.writerow([bad, "H1"])
    with fed.client("analyst@" + REQUESTER) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.verify(city_dir / "rules" / "dibao.toml", subjects)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "row 3" in err.value.details() and bad not in err.value.details()


def test_unknown_jobs_are_not_found(fed, results, tmp_path):
    res, _, _ = results("gaoling")
    with fed.client("analyst@" + REQUESTER) as c:
        for call in (c.job, c.cancel):
            with pytest.raises(grpc.RpcError) as err:
                call("0123456789abcdef01234567")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            c.results("0123456789abcdef01234567", tmp_path / "none.csv")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Cancelling a finished job changes nothing.
        assert c.cancel(res.job_id).state == "succeeded"
        assert c.job(res.job_id).state == "succeeded"
    # A job is visible to its requester and providers only.
    with fed.client("analyst@market_regulation") as c:
        with pytest.raises(grpc.RpcError) as err:
            c.job(res.job_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert res.job_id not in {j.job_id for j in c.jobs()}
    with fed.client("analyst@hrss") as c:
        assert c.job(res.job_id).state == "succeeded"          # a provider of gaoling


def _new_job(c, before: set[str]):
    jobs = [j for j in c.jobs() if j.job_id not in before]
    assert len(jobs) <= 1, jobs
    return jobs[0] if jobs else None


def _assert_nothing_written(fed, c, job_id: str, out):
    with pytest.raises(grpc.RpcError) as err:
        c.results(job_id, out)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not fed.runtime(REQUESTER).store.has_blob("results", job_id)
    # The job's working data at the requester is wiped.
    assert not fed.runtime(REQUESTER).store.has_blob("jobkeys", job_id)
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


def _verify_again(fed, city_dir, subjects, out):
    with fed.client("analyst@" + REQUESTER) as c:
        res = c.verify(city_dir / "rules" / "dibao.toml", subjects, out=out)
    assert res.rows == len(read_csv(subjects)[1])


def test_stopped_provider_is_refused_at_submission(fed, city, tmp_path):
    """SubmitJob runs a first admission round before it answers. A provider that stopped a
    moment ago is still listed online (it has not missed its heartbeats yet), so that round
    reaches for it and fails: SubmitJob answers UNAVAILABLE naming the provider, the job is
    recorded as failed, and nothing is written."""
    city_dir, _ = city
    subjects = tmp_path / "subjects.csv"
    subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 3)
    out = tmp_path / "never.csv"
    fed.stop_node("tax")
    try:
        with fed.client("analyst@" + REQUESTER) as c:
            assert {n.node_id: n.online for n in c.nodes()}["tax"], "the directory has not noticed yet"
            before = {j.job_id for j in c.jobs()}
            with pytest.raises(grpc.RpcError) as err:
                c.verify(city_dir / "rules" / "dibao.toml", subjects, out=out)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "node 'tax' failed in this step: UNAVAILABLE" in err.value.details()
            job = _new_job(c, before)
            assert job.state == "failed" and job.reason == err.value.details()
            _assert_nothing_written(fed, c, job.job_id, out)
    finally:
        fed.start_node("tax")
    _verify_again(fed, city_dir, subjects, out)


def test_provider_known_offline_is_refused_before_a_job_exists(fed, city, tmp_path):
    """Once the directory marks the provider offline, validation refuses the job outright,
    before any job is created."""
    city_dir, _ = city
    subjects = tmp_path / "subjects.csv"
    subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 3)
    out = tmp_path / "never.csv"
    directory = fed.coordinator[1].directory
    directory.offline_after = 3          # other nodes heartbeat every second: they stay online
    fed.stop_node("tax")
    try:
        with fed.client("analyst@" + REQUESTER) as c:
            deadline = time.time() + 15
            while {n.node_id: n.online for n in c.nodes()}["tax"] and time.time() < deadline:
                time.sleep(0.2)
            assert not {n.node_id: n.online for n in c.nodes()}["tax"]
            before = {j.job_id for j in c.jobs()}
            with pytest.raises(grpc.RpcError) as err:
                c.verify(city_dir / "rules" / "dibao.toml", subjects, out=out)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert "node 'tax' is offline" in err.value.details()
            assert _new_job(c, before) is None
        assert not out.exists()
    finally:
        directory.offline_after = fed.coordinator_config.offline_after_seconds
        fed.start_node("tax")


def test_provider_dying_mid_job_fails_the_job_and_writes_nothing(fed, city, tmp_path):
    """A provider admits the job and then stops while the job waits for another provider's data
    officer; once approved, the job runs, cannot reach it, fails naming it, and the requester
    keeps nothing of the job."""
    city_dir, _ = city
    subjects = tmp_path / "subjects.csv"
    subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 3)
    out = tmp_path / "never.csv"
    policy = (fed.root / "public_security" / "policy.toml").read_text()
    assert 'approval = "auto"' in policy
    fed.write_policy("public_security", policy.replace('approval = "auto"', 'approval = "manual"'))
    try:
        with fed.client("analyst@" + REQUESTER) as c, fed.client("officer@public_security") as officer, \
                fed.client("analyst@" + REQUESTER) as watcher, futures.ThreadPoolExecutor(1) as pool:
            before = {j.job_id for j in watcher.jobs()}
            running = pool.submit(c.verify, city_dir / "rules" / "dibao.toml", subjects, out=out)
            job = None
            try:
                deadline = time.time() + 30
                while (job is None or job.state != "pending_approval") and time.time() < deadline:
                    assert not running.done(), running.exception()
                    time.sleep(0.1)
                    job = _new_job(watcher, before)
                assert job is not None and job.state == "pending_approval", job
                fed.stop_node("tax")                      # admitted, and gone before its evaluation
                assert officer.decide(job.job_id, True, "checked").state == "approved"
                with pytest.raises(JobFailed, match="tax"):
                    running.result(timeout=90)
            finally:
                if job is not None and not running.done():
                    watcher.cancel(job.job_id)            # do not leave the client waiting on a failed test
            job = watcher.job(job.job_id)
            assert job.state == "failed" and "node 'tax' failed in this step: UNAVAILABLE" in job.reason
            _assert_nothing_written(fed, watcher, job.job_id, out)
    finally:
        fed.write_policy("public_security", policy)
        if "tax" not in fed.nodes:
            fed.start_node("tax")
    _verify_again(fed, city_dir, subjects, out)
