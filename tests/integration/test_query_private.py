"""Query-private federated queries (``query_private`` jobs, ``--private``) through real servers.

The federation is test_query.py's (grants of the sandbox for its queries); the SQLite copy of the
plaintext city is its ``db`` fixture. Answers
must equal SQLite's (released groups only); the provider's step inputs are recorded and must
hold no requester identifier; unsupported shapes and DP are refused with one line.
"""
from __future__ import annotations

import json
import struct
from decimal import ROUND_HALF_UP, Decimal

import grpc
import pytest
from pc_client.cli import main as cli_main
from pc_client.sandbox import query_grants

from pc_common import certs
from pc_common.pb import node_pb2
from pc_common.wire import blob_chunks
from pc_node import envelope, steps
from pc_node.admin import grants_toml
from pc_node.secure_agg import get_backend
from pc_node.steps import query_private, subject_lists
from tests.psi_kit import header
from tests.integration.test_query import AGENCIES, CARS, JOIN_WAGES, NO_HOME, PER_HOUSEHOLD, REQ, db  # noqa: F401

SQL_JOIN = ("SELECT a.district, COUNT(*), COUNT(DISTINCT a.id_number), SUM(w.monthly_income), "
            "SUM(w.monthly_income) || ',' || COUNT(*) FROM civil_affairs.applicants a JOIN tax.wages w "
            "ON a.id_number = w.id_number WHERE w.monthly_income >= 100000 GROUP BY a.district")


@pytest.fixture(scope="module")
def qfed(new_federation, small_city):
    """test_query.py's federation without its provider-category metadata (not used here); its ``db``
    fixture (the plaintext city in SQLite) resolves to this one."""
    city, _ = small_city(120, 5)
    fed = new_federation("query_private", AGENCIES, city)
    for agency in AGENCIES[1:]:
        path = fed.root / agency / "policy.toml"
        extra = grants_toml(query_grants(agency, [JOIN_WAGES, CARS, NO_HOME, PER_HOUSEHOLD], {}))
        fed.write_policy(agency, path.read_text(encoding="utf-8") + "\n" + extra)
    return fed, city


def _run(fed, sql, tmp_path, **kw):
    with fed.client(f"analyst@{REQ}") as c:
        return c.query(sql, out=tmp_path / "q.csv", private=True, **kw)


def _expected_join(db, k=5):
    out = []
    for d, n, people, total, avg in db.execute(SQL_JOIN).fetchall():
        if people < k:
            continue
        s, cnt = (int(x) for x in avg.split(","))
        mean = (Decimal(s) / Decimal(cnt)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        out.append({"district": d, "n": str(n), "people": str(people),
                    "total": str((Decimal(total) / 100).quantize(Decimal("0.01"))),
                    "mean": str((mean / 100).quantize(Decimal("0.01")))})
    return sorted(out, key=lambda r: r["district"])


@pytest.fixture
def provider_inputs(monkeypatch):
    """Everything the provider's evaluate step receives, and the batches it opens."""
    seen: list[bytes] = []
    real_eval, real_open = steps.STEPS["query_private.evaluate"], query_private._open_batches

    def recording(runtime, header, inbound):
        seen.append(header.SerializeToString())

        def tap():
            for msg in inbound:
                seen.append(msg.SerializeToString())
                yield msg
        yield from real_eval(runtime, header, tap())

    def opened(runtime, doc, sealed, params):
        points, sizes = real_open(runtime, doc, sealed, params)
        seen.append(points.tobytes())
        return points, sizes
    monkeypatch.setitem(steps.STEPS, "query_private.evaluate", recording)
    monkeypatch.setattr(query_private, "_open_batches", opened)
    return seen


def test_join_counts_sums_averages_equal_sqlite_and_the_provider_sees_no_identifier(qfed, db, tmp_path,
                                                                                     provider_inputs):
    fed, _ = qfed
    res = _run(fed, JOIN_WAGES, tmp_path)
    expected = _expected_join(db)
    assert res.records == expected and expected
    assert (tmp_path / "q.csv").read_text(encoding="utf-8").splitlines()[0] == "district,n,people,total,mean"
    assert res.summary["released"] == len(expected)
    assert set(res.leakage) == {"coordinator", REQ, "tax"}
    assert "match count" in " ".join(res.leakage[REQ])
    # The provider received the spec, its key, a sealed blob and a signature — and opened points only.
    assert len(provider_inputs) >= 4
    ids = [r[0] for r in db.execute("SELECT id_number FROM civil_affairs.applicants")]
    blob = b"".join(provider_inputs)
    for ident in ids:
        assert ident.encode() not in blob and ident.lower().encode() not in blob
    # The requester's rows after its WHERE were all asked, blinded: 32 bytes each.
    assert len(provider_inputs[-1]) == 32 * len(ids)


def test_exists_and_threshold_equal_sqlite_and_small_groups_are_suppressed(qfed, db, tmp_path):
    fed, _ = qfed
    truth = db.execute("SELECT a.district, COUNT(*) FROM civil_affairs.applicants a WHERE EXISTS (SELECT 1 FROM "
                       "public_security.vehicles v WHERE v.id_number = a.id_number AND v.vehicle_type <> "
                       "'motorcycle') GROUP BY a.district ORDER BY a.district").fetchall()
    counts = sorted({n for _, n in truth})
    k = next((n for n in counts if n >= 5 and any(m < n for m in counts)), max(counts))
    res = _run(fed, CARS, tmp_path, min_group_size=k)
    assert [[r["district"], r["count(*)"]] for r in res.records] == [[d, str(n)] for d, n in truth if n >= k]
    assert any(n == k for _, n in truth)
    res = _run(fed, PER_HOUSEHOLD, tmp_path)
    assert res.records == [] and res.summary["released"] == 0 and res.summary["suppressed"] == res.summary["groups"]


def test_the_coordinator_holds_no_identifier_or_value(qfed, db, tmp_path):
    fed, _ = qfed
    res = _run(fed, JOIN_WAGES, tmp_path)
    ids = [r[0] for r in db.execute("SELECT id_number FROM civil_affairs.applicants")]
    totals = [r["total"] for r in res.records] + [r["mean"] for r in res.records]
    with fed.client(f"analyst@{REQ}") as c:
        job = c.job(res.job_id)
    summary = json.loads(job.summary_json)
    assert summary["mode"] == "private" and "released" not in summary
    for text in (job.summary_json, job.leakage_json):
        assert not any(i in text for i in ids) and not any(t in text for t in totals)
    for p in (fed.root / "coordinator").rglob("*"):
        if p.is_file():
            content = p.read_bytes()
            assert not any(i.encode() in content for i in ids)


def test_unsupported_shapes_and_dp_are_refused_with_one_line(qfed, tmp_path):
    fed, _ = qfed
    with fed.client(f"analyst@{REQ}") as c:
        before = len(c.jobs())
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query_private", {"sql": NO_HOME})
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "NOT EXISTS alone is not supported" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query_private", {"sql": JOIN_WAGES, "epsilon": 1.0})
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--private cannot carry differential privacy" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            c.submit("query_private", {"sql": JOIN_WAGES + " ORDER BY a.district"})
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(c.jobs()) == before
        # Below the grant's minimum group size: the provider refuses at the first admission round
        # (PERMISSION_DENIED at submission), before any step runs.
        with pytest.raises(grpc.RpcError) as exc:
            c.query(CARS, private=True, min_group_size=2)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "minimum group size of at least 5" in exc.value.details()


def test_a_deviating_coordinator_cannot_feed_the_provider_malformed_batches(qfed, db, tmp_path, as_coordinator):
    """Batches signed by the requester (built here as its node would) but of the wrong size:
    INVALID_ARGUMENT; a replay of the step is PERMISSION_DENIED; the servers keep serving."""
    fed, _ = qfed
    stub, req = as_coordinator(fed, "tax"), fed.runtime(REQ)
    with fed.client(f"analyst@{REQ}") as c:
        signed = c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="query_private", params=json.dumps(
            {"sql": JOIN_WAGES}).encode()), timeout=10)
    signed = node_pb2.SignedJobSpec(spec=signed.spec, signature=signed.signature, signer=REQ)
    doc = json.loads(signed.spec)
    assert list(stub.Step(iter([header(signed, "job.admit")]), timeout=10))[-1].done.summary["admitted"] == "yes"
    pubctx = get_backend("bfv").generate_keypair()[0].serialize()
    groups, rows = doc["params"]["groups"], doc["params"]["subjects"]
    sizes = [1] * (groups - 1) + [rows - groups + 1]
    payload = struct.pack("<I", groups) + struct.pack(f"<{groups}I", *sizes) + bytes([9] + [0] * 31) * (rows - 1)
    sealed = envelope.seal(req.peer_keys("tax").x25519_public, payload, f"pc/query_private/{doc['job_id']}/tax".encode())
    binding = req.sm2.sign(subject_lists.binding("query_private", doc["job_id"], "tax", pubctx, sealed))
    msgs = [header(signed, "query_private.evaluate"), *blob_chunks("pubctx", pubctx), *blob_chunks("sealed", sealed),
            *blob_chunks("binding", binding)]
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Step(iter(msgs), timeout=30))
        assert err.value.code() == code, err.value.details()
    list(stub.Step(iter([header(signed, "job.cleanup")]), timeout=10))
    assert _run(fed, CARS, tmp_path).records


def test_a_grant_demanding_dp_refuses_private_mode(qfed, tmp_path):
    fed, _ = qfed
    path = fed.root / "tax" / "policy.toml"
    original = path.read_text(encoding="utf-8")
    fed.write_policy("tax", grants_toml(query_grants("tax", ["-- epsilon: 1.0\n" + JOIN_WAGES], {})))
    try:
        with pytest.raises(grpc.RpcError) as exc:      # at admission, before any step runs
            _run(fed, JOIN_WAGES, tmp_path)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "demands differential privacy" in exc.value.details()
    finally:
        fed.write_policy("tax", original)


def test_cli_private_query(qfed, tmp_path, capsys):
    fed, _ = qfed
    files = certs.client_files(fed.certs, REQ, "analyst")
    conn = ["--coordinator", f"127.0.0.1:{fed.coordinator_port}", "--node", f"127.0.0.1:{fed.nodes[REQ][2]}",
            "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)]
    out = tmp_path / "cli.csv"
    rc = cli_main(["query", CARS, "--private", "--out", str(out), "--json", *conn])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["state"] == "succeeded" and len(out.read_text(encoding="utf-8").splitlines()) - 1 == len(doc["records"])
    rc = cli_main(["query", CARS, "--private", "--epsilon", "1", *conn])
    captured = capsys.readouterr()
    assert rc != 0 and captured.out == "" and "--private cannot carry differential privacy" in captured.err
    assert "Traceback" not in captured.err
