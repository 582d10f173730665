"""Eligibility verification end to end, compared with the plaintext oracle
(``pc_devkit.ground_truth``) verdict by verdict and reason by reason."""
from __future__ import annotations

import csv

import grpc
import pytest

from pc_client.sdk import JobFailed
from pc_devkit import ground_truth
from pc_common.errors import InvalidInput
from pc_rules.rules import load_rule

from tests.integration.conftest import REQUESTER, read_csv, subset_subjects

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


def test_stopped_provider_fails_the_job_and_writes_nothing(fed, city, tmp_path):
    city_dir, _ = city
    subjects = tmp_path / "subjects.csv"
    subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 3)
    rule = load_rule(city_dir / "rules" / "dibao.toml")
    out = tmp_path / "never.csv"
    fed.stop_node("tax")
    try:
        with fed.client("analyst@" + REQUESTER) as c:
            receipt = c.upload_subjects(subjects, rule)
            try:
                job_id = c.submit("verify", {"rule": rule.to_dict(), "he": "bfv"}, receipt.subject_set)
            except grpc.RpcError as exc:        # refused up front: the node is known to be offline
                assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.FAILED_PRECONDITION)
                assert "'tax'" in exc.details()
                job_id = None
            if job_id is not None:
                job = c.watch(job_id, timeout=60)
                assert job.state == "failed"
                assert "'tax'" in job.reason
                with pytest.raises(JobFailed, match="tax"):
                    c._finish(job, out)
                with pytest.raises(grpc.RpcError) as err:
                    c.results(job_id, out)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert not fed.runtime(REQUESTER).store.has_blob("results", job_id)
                # The job's working data at the requester is wiped.
                assert not fed.runtime(REQUESTER).store.has_blob("jobkeys", job_id)
        assert not out.exists() and not out.with_name(out.name + ".part").exists()
    finally:
        fed.start_node("tax")
    with fed.client("analyst@" + REQUESTER) as c:
        res = c.verify(city_dir / "rules" / "dibao.toml", subjects, out=out)
    assert res.rows == len(read_csv(subjects)[1])
