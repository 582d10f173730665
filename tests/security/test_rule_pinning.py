"""An adversarial requester (issue 10) against providers that pin the rules they serve.

A curious civil-affairs operator writes rules as it likes and reads what its own node decrypts.
Providers' grants pin each rule (id + digest of its criteria touching them) or bound every
threshold and the comparisons per column; they refuse duplicated subjects and evaluate one
subject at most N times a period. Everything here runs against the real federation on loopback
(the hostile ``env`` of tests/security/conftest.py).
"""
from __future__ import annotations

import json
import sqlite3
import time

import grpc
import pytest

from pc_client.cli import main
from pc_client.sdk import JobFailed
from pc_common import certs
from pc_common.pb import node_pb2
from pc_common.wire import blob_chunks
from pc_rules.rules import load_rule, parse_rule
from tests.conftest import coordinator_address, node_address, norm, read_csv, write_csv
from tests.security.hostile_kit import RULES, admit, analyst, pins, prepare, rpc_error, rule_text, submit, wait_state

HOME_GRANT = """
[[grants]]
dataset = "properties"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
approval = "{approval}"
[grants.columns]
id_number = "join_key"
usage = "predicate"
"""
PENSIONS = """
[[grants]]
dataset = "pensions"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
{extra}
[grants.columns]
id_number = "join_key"
monthly_amount = "{use}"
"""
VEHICLES = """
[[grants]]
dataset = "vehicles"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
[grants.columns]
id_number = "join_key"
vehicle_type = "predicate"
"""


def pension_rule(rule_id: str, limits: list[str], where: str = "") -> str:
    """A sum_below criterion per limit over hrss's pensions, one subject per group."""
    crit = "".join(f'[[criteria]]\nname = "probe_{i + 1:02d}"\ntype = "sum_below"\n'
                   f'source = "hrss.pensions.monthly_amount"\nlimit = {lim}\n'
                   + (f'where = "{where}"\n' if where else "") for i, lim in enumerate(limits))
    return rule_text(rule_id, crit, group=False)


def admitted(messages) -> str:
    return messages[-1].done.summary["admitted"]


def write_rule(env, name: str, text: str):
    path = env["rules"] / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def pinned(rule_text_: str, agency: str) -> str:
    r = parse_rule(rule_text_)
    return f'rules = [{{ id = "{r.id}", digest = "{r.criteria_digest(agency)}" }}]'


def subjects_of(env, name: str, households: range):
    """A subjects file with the given households (by order in the applicants file)."""
    header, rows = read_csv(env["city"] / "civil_affairs" / "applicants.csv")
    order = list(dict.fromkeys(r["household_id"] for r in rows))
    chosen = {order[i] for i in households}
    picked = [[r[h] for h in header] for r in rows if r["household_id"] in chosen]
    return write_csv(env["root"] / f"{name}.csv", header, picked), [dict(zip(header, p)) for p in picked]


@pytest.fixture(autouse=True)
def policies(env, base_policies):
    """The hostile env's grants (public_security pins car and quoted, hrss pins pension)."""
    yield


# ----- 3. rules pinned by providers ----------------------------------------------------------------------
def test_changed_thresholds_or_where_are_refused_naming_the_criterion(env, as_coordinator):
    fed = env["fed"]
    home = RULES["home"]
    fed.write_policy("housing", HOME_GRANT.format(approval="auto") + pins("housing", "home"))
    with analyst(env) as c:
        # The pinned rule itself is admitted (by the provider, asked directly as a coordinator would).
        signed = prepare(c, env, "home")
        assert admitted(admit(as_coordinator(fed, "housing"), signed)) == "yes"
        # Same id, another threshold: refused at submission, naming the criterion.
        write_rule(env, "home_max2", home.replace("max = 1", "max = 2"))
        err = rpc_error(c.verify, env["rules"] / "home_max2.toml", env["subjects"])
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert ("criterion 'one_home': housing's grant on 'properties' does not allow rule 'home' with these"
                " thresholds") in err.details()
        # Same threshold, another where: refused as well.
        write_rule(env, "home_any", home.replace("usage = 'residential'", "usage != 'residential'"))
        err = rpc_error(c.verify, env["rules"] / "home_any.toml", env["subjects"])
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "criterion 'one_home'" in err.details()
        # An extra criterion on the pinned provider changes the digest too.
        write_rule(env, "home_more", home + '\n[[criteria]]\nname = "any_home"\ntype = "exists"\n'
                   'source = "housing.properties"\n')
        err = rpc_error(c.verify, env["rules"] / "home_more.toml", env["subjects"])
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "rule 'home' with these thresholds" in err.details()
        # The provider refuses by itself, even when a coordinator skips the first admission round.
        signed = prepare(c, env, "home_max2")
    err = rpc_error(admit, as_coordinator(fed, "housing"), signed)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "criterion 'one_home'" in err.details()


def test_unpinned_grant_allows_no_comparisons(env):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES)     # columns granted, but no rule pinned, nothing bounded
    with analyst(env) as c:
        err = rpc_error(c.verify, env["rules"] / "car.toml", env["subjects"])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "criterion 'no_car': public_security's grant on 'vehicles' does not allow rule 'car'" in err.details()


def test_pinned_rule_runs(env, tmp_path):
    with analyst(env) as c:
        result = c.verify(env["rules"] / "car.toml", env["subjects"], out=tmp_path / "out.csv")
    assert result.rows == len(env["rows"])


def test_64_thresholds_on_one_subject_are_refused(env):
    fed = env["fed"]
    probes = write_rule(env, "probe64", pension_rule("pension", [f"{100 * (i + 1)}.00" for i in range(64)]))
    assert len(load_rule(probes).criteria) == 64
    single, _ = subjects_of(env, "one_subject", range(1))
    with analyst(env) as c:
        # Under the id of the pinned rule: the digest differs.
        err = rpc_error(c.verify, probes, single)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "criterion 'probe_01': hrss's grant on 'pensions' does not allow rule 'pension'" in err.details()
        # Under a grant bounding thresholds: each is in bounds, but one comparison per column per job.
        fed.write_policy("hrss", PENSIONS.format(use="aggregate", extra=(
            "thresholds = { monthly_amount = { min = 0, max = 10000 } }\nmax_comparisons = 1")))
        err = rpc_error(c.verify, probes, single)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert ("criterion 'probe_02': hrss's grant on 'pensions' allows at most 1 comparison(s) of column"
                " 'monthly_amount' per job") in err.details()
        # A threshold outside the bounds is refused, naming it.
        wide = write_rule(env, "wide", pension_rule("wide", ["20000.00"]))
        err = rpc_error(c.verify, wide, single)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "criterion 'probe_01'" in err.details() and "limit 20000.00 is outside the bounds" in err.details()


def test_binary_search_over_jobs_is_refused(env):
    """Four jobs halving the limit on one person: a pinned grant refuses every changed limit; a
    bounding grant lets three through and refuses the fourth evaluation of the subject that day."""
    fed = env["fed"]
    single, _ = subjects_of(env, "searched", range(1, 2))
    limits = ["3000.00", "1500.00", "750.00", "375.00"]
    paths = [write_rule(env, f"search_{i}", pension_rule("pension", [lim])) for i, lim in enumerate(limits)]
    with analyst(env) as c:
        for path in paths[1:]:                       # the pinned "pension" rule has limit 3000.00
            err = rpc_error(c.verify, path, single)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "criterion 'probe_01'" in err.details()
        fed.write_policy("hrss", PENSIONS.format(use="aggregate", extra=(
            "thresholds = { monthly_amount = { min = 0, max = 5000 } }\nmax_comparisons = 1")))
        for path in paths[:3]:
            c.verify(path, single)
        with pytest.raises(JobFailed) as failed:
            c.verify(paths[3], single)
    assert "RESOURCE_EXHAUSTED" in str(failed.value) and "already evaluated 3 time(s)" in str(failed.value)


# ----- 5. column uses by highest rank ---------------------------------------------------------------------
def test_summing_a_predicate_column_is_refused(env):
    """``where = "monthly_amount >= 0"`` does not make a summed column a predicate — even when the
    grant pins that very rule."""
    fed = env["fed"]
    trick = pension_rule("trick", ["3000.00"], where="monthly_amount >= 0")
    path = write_rule(env, "trick", trick)
    fed.write_policy("hrss", PENSIONS.format(use="predicate", extra=pinned(trick, "hrss")))
    with analyst(env) as c:
        err = rpc_error(c.verify, path, env["subjects"])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not allow column use: monthly_amount as aggregate" in err.details()


# ----- the approval request shows what runs -----------------------------------------------------------------
def test_approval_request_lists_criteria_thresholds_and_subjects(env, capsys):
    fed = env["fed"]
    fed.write_policy("housing", HOME_GRANT.format(approval="manual") + pins("housing", "home"))
    with analyst(env) as c, fed.client("officer@housing") as officer:
        job_id = submit(c, env, "home")
        wait_state(c, job_id, ("pending_approval",))
        a = {a.job_id: a for a in officer.approvals()}[job_id]
        assert (a.kind, a.rule_id, a.reveal, a.subjects) == ("verify", "home", "verdict", len(env["rows"]))
        assert a.groups == len({r["household_id"] for r in env["rows"]})
        assert [(x.name, x.type, list(x.sources), x.where, x.threshold) for x in a.criteria] == \
            [("one_home", "count_at_most", ["housing.properties"], "usage = 'residential'", "max = 1")]
        # `pc approvals list` shows the same to the officer.
        files = certs.client_files(fed.certs, "housing", "officer")
        capsys.readouterr()
        assert main(["approvals", "list", "--coordinator", coordinator_address(fed), "--node",
                     node_address(fed, "housing"), "--cert", str(files.cert), "--key", str(files.key),
                     "--ca", str(files.ca)]) == 0
        out = capsys.readouterr().out
        assert f"rule 'home' (verdict), {a.subjects} subject(s) in {a.groups} group(s)" in out
        assert "- one_home: count_at_most of housing.properties; max = 1; where usage = 'residential'" in out
        assert c.cancel(job_id).state == "cancelled"


# ----- 4. subject hygiene ------------------------------------------------------------------------------------
def test_duplicated_subject_is_refused_by_the_requester_node(env, tmp_path):
    header, rows = read_csv(env["subjects"])
    first = rows[0]
    twice = dict(first, id_number=" " + first["id_number"].lower() + " ", household_id="other")
    path = write_csv(tmp_path / "dup.csv", header, [[r[h] for h in header] for r in rows + [twice]])
    with analyst(env) as c:
        err = rpc_error(c.verify, env["rules"] / "car.toml", path)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"row {len(rows) + 2}: the same subject as row 2" in err.details()


def _blobs(messages):
    out: dict[str, bytes] = {}
    for m in messages:
        if m.WhichOneof("kind") == "chunk":
            out[m.chunk.stream] = out.get(m.chunk.stream, b"") + m.chunk.data
    return out


@pytest.mark.parametrize("second", ["11010519491231002X", "11010519491231002x"])
def test_duplicated_subject_in_a_hand_built_sealed_list_is_refused_by_the_provider(env, as_coordinator, second):
    """A deviating requester (it has its own signing key) seals one person twice for a provider."""
    from pc_node.steps import subject_lists
    fed = env["fed"]
    requester_rt = fed.runtime("civil_affairs")
    rule = load_rule(env["rules"] / "car.toml")
    with analyst(env) as c:
        receipt = c.node.UploadSubjects(iter([node_pb2.SubjectsChunk(subject_column="id_number", rows=[
            node_pb2.SubjectRow(subject=s) for s in ("11010519491231002X", "110101199003071233")])]), timeout=10)
        signed = c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="verify", params=json.dumps(
            {"rule": rule.to_dict(), "he": "bfv"}).encode(), subject_set=receipt.subject_set), timeout=10)
    job_id = json.loads(signed.spec)["job_id"]
    provider, requester = as_coordinator(fed, "public_security"), as_coordinator(fed, "civil_affairs")
    assert admitted(admit(provider, signed)) == "yes"

    def head(step):
        return node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step=step, spec=signed))
    pubctx = _blobs(requester.Step(iter([head("verify.prepare")]), timeout=30))["pubctx"]
    sealed = subject_lists.sealed_list([(0, "11010519491231002X"), (1, second)],
                                       requester_rt.peer_keys("public_security").x25519_public,
                                       subject_lists.aad("verify", job_id, "public_security"))
    binding = requester_rt.sm2.sign(subject_lists.binding("verify", job_id, "public_security", pubctx, sealed))
    msgs = [head("verify.evaluate"), *blob_chunks("pubctx", pubctx), *blob_chunks("sealed", sealed),
            *blob_chunks("binding", binding)]
    err = rpc_error(provider.Step, iter(msgs), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names the same subject more than once" in err.details()
    alerts = [e for e in fed.runtime("public_security").audit.entries()
              if e["action"] == "alert.subjects" and e["job"] == job_id]
    assert alerts and alerts[0]["outcome"] == "refused"
    for stub in (provider, requester):
        list(stub.Step(iter([head("job.cleanup")]), timeout=10))


def test_fourth_evaluation_in_a_day_is_exhausted_and_counted_by_blind_index(env, tmp_path):
    fed = env["fed"]
    provider = fed.runtime("public_security")
    fed.write_policy("public_security", VEHICLES + pins("public_security", "car"))   # default: 3 a day
    subjects, rows = subjects_of(env, "counted", range(5, 8))
    ids = [norm(r["id_number"]) for r in rows]
    start, offset = time.time(), [0.0]
    provider.governance.clock = lambda: start + offset[0]
    try:
        with analyst(env) as c:
            for _ in range(3):
                c.verify(env["rules"] / "car.toml", subjects)
            with pytest.raises(JobFailed) as failed:
                c.verify(env["rules"] / "car.toml", subjects)
            assert "RESOURCE_EXHAUSTED" in str(failed.value)
            assert f"{len(ids)} subject(s) of the job were already evaluated 3 time(s)" in str(failed.value)
            alerts = [e for e in provider.audit.entries() if e["action"] == "alert.evaluations"]
            assert alerts and alerts[-1]["outcome"] == "refused" and alerts[-1]["requester"] == "civil_affairs"
            assert not any(i in json.dumps(alerts) for i in ids)
            # Nothing was charged for the refused job: the next day all subjects are evaluated again.
            offset[0] = 86400 + 60
            c.verify(env["rules"] / "car.toml", subjects, out=tmp_path / "next_day.csv")
    finally:
        provider.governance.clock = time.time
    # Counted under the node's blind index, never the identifier.
    path = fed.root / "public_security" / "governance.db"
    with sqlite3.connect(path) as db:
        counted = {bytes.fromhex(r[0]): r[1] for r in db.execute(
            "SELECT subject, COUNT(*) FROM evaluations WHERE requester = 'civil_affairs' GROUP BY subject")}
    for i in ids:
        assert counted[provider.store.cipher.blind_index(i)] == 4
    raw = b"".join(p.read_bytes() for p in path.parent.glob("governance.db*"))
    assert not any(i.encode() in raw or i.lower().encode() in raw for i in ids)

