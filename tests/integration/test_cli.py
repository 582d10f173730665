"""The `pc` command line, called in-process through ``pc_client.cli.main``.

One sandbox (real coordinator and node processes) serves the whole module; it is always
brought down, whatever happens.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import pathlib
import sqlite3

import pytest
from cryptography import x509

from pc_client.cli import main
from pc_node import idnum
from pc_common.identity import identity_of


def _ids(n: int, start: int = 1) -> list[str]:
    return [idnum.make_id("440303", dt.date(1960, 3, 1) + dt.timedelta(days=101 * i), 200 + i)
            for i in range(start, start + n)]


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list[str]]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _one_line_error(captured) -> str:
    err = captured.err.strip()
    assert err.startswith("error: "), captured.err
    assert "\n" not in err, f"more than one line on stderr: {captured.err!r}"
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return err


# ----- certificates and import ---------------------------------------------------------------------
def test_certs_init(tmp_path, capsys):
    d = tmp_path / "certs"
    rc = main(["certs", "init", str(d), "--nodes", "civil_affairs,housing",
               "--clients", "analyst@civil_affairs,officer:officer@housing,operator:operator"])
    out = capsys.readouterr()
    assert rc == 0 and "created CA" in out.out
    for f in ("ca.pem", "ca.key", "coordinator/cert.pem", "nodes/housing/cert.pem", "nodes/housing/sm2.key",
              "nodes/housing/x25519.key", "clients/civil_affairs/analyst/key.pem"):
        assert (d / f).exists(), f
    assert (d / "ca.key").stat().st_mode & 0o077 == 0
    who = identity_of(x509.load_pem_x509_certificate((d / "clients/housing/officer/cert.pem").read_bytes()))
    assert (who.role, who.agency, who.user) == ("officer", "housing", "officer")
    who = identity_of(x509.load_pem_x509_certificate((d / "nodes/civil_affairs/cert.pem").read_bytes()))
    assert (who.role, who.agency) == ("node", "civil_affairs")

    assert main(["certs", "init", str(d), "--nodes", "civil_affairs"]) == 2
    assert "already exists" in _one_line_error(capsys.readouterr())
    assert main(["certs", "init", str(tmp_path / "c2"), "--nodes", "Bad-Name"]) == 2
    assert "must match" in _one_line_error(capsys.readouterr())
    assert main(["certs", "init", str(tmp_path / "c3"), "--nodes", "a", "--clients", "nobody"]) == 2
    _one_line_error(capsys.readouterr())


@pytest.fixture
def node_config(tmp_path):
    certs_dir = tmp_path / "certs"
    assert main(["certs", "init", str(certs_dir), "--nodes", "tax"]) == 0
    data = tmp_path / "tax"
    nd = certs_dir / "nodes" / "tax"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'node_id = "tax"\ncoordinator = "127.0.0.1:1"\ndata_dir = "{data}"\n'
                   f'master_key_file = "{tmp_path / "master.key"}"\n[tls]\ncert = "{nd / "cert.pem"}"\n'
                   f'key = "{nd / "key.pem"}"\nca = "{certs_dir / "ca.pem"}"\nsm2_key = "{nd / "sm2.key"}"\n'
                   f'x25519_key = "{nd / "x25519.key"}"\n')
    return cfg


def test_node_import_errors_are_one_line(node_config, tmp_path, capsys):
    capsys.readouterr()
    keys = _ids(3)
    bad = keys[1][:17] + ("1" if keys[1][17] != "1" else "2")
    wages = _write_csv(tmp_path / "in" / "wages.csv", ["id_number", "monthly_income"],
                       [[keys[0], "100.00"], [bad, "200.00"], [keys[2], "300.00"]])
    cfg = str(node_config)

    cases = [
        (["node", "import", "--config", str(tmp_path / "missing.toml"), str(wages)], "no such config file"),
        (["node", "import", "--config", cfg, str(wages)], "row 3"),
        (["node", "import", "--config", cfg, str(tmp_path / "nope.csv")], "no such file"),
        (["node", "import", "--config", cfg, str(wages), "--rejects", str(tmp_path / "r.csv")], "--skip-invalid"),
        (["node", "import", "--config", cfg, str(wages), "--dataset", "../x"], "dataset name"),
    ]
    for argv, expected in cases:
        rc = main(argv)
        captured = capsys.readouterr()
        assert rc != 0, argv
        assert expected in _one_line_error(captured), (argv, captured.err)
        assert bad not in captured.err
        assert captured.out == ""

    rc = main(["node", "import", "--config", cfg, str(wages), "--skip-invalid", "--rejects",
               str(tmp_path / "r.csv"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and (doc["imported"], doc["rejected"]) == (2, 1)
    assert doc["columns"] == {"monthly_income": "decimal"}
    assert main(["node", "import", "--config", cfg, str(wages), "--skip-invalid"]) == 2
    assert "already exists" in _one_line_error(capsys.readouterr())
    assert main(["node", "datasets", "--config", cfg, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["rows"]) for d in listed] == [("wages", 2)]


def test_policy_check_and_unsuspend(node_config, capsys):
    from pc_common.config import NodeConfig
    from pc_node import admin
    cfg = str(node_config)
    capsys.readouterr()
    assert main(["policy", "check", "--config", cfg, "--requester", "civil_affairs"]) == 0
    assert "may do nothing at node 'tax' (default deny)" in capsys.readouterr().out
    admin.write_grants(NodeConfig.load(node_config), [
        admin.Grant("wages", "civil_affairs", ("social_assistance.eligibility",),
                    {"id_number": "join_key", "monthly_income": "predicate"}, reveal="reasons"),
        admin.Grant("wages", "housing", ("data_matching",), {"id_number": "join_key"})])
    assert main(["policy", "check", "--config", cfg, "--requester", "civil_affairs", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(g["dataset"], g["columns"], g["reveal"]) for g in doc] == \
        [("wages", {"id_number": "join_key", "monthly_income": "predicate"}, "reasons")]
    assert main(["policy", "unsuspend", "--config", cfg, "--requester", "civil_affairs"]) == 0
    assert "was not suspended" in capsys.readouterr().out
    NodeConfig.load(node_config).policy.write_text("[[grants]\n")   # not TOML
    assert main(["policy", "check", "--config", cfg, "--requester", "civil_affairs"]) == 2
    _one_line_error(capsys.readouterr())


def test_node_admin_knows_an_unchanged_import(node_config, tmp_path):
    from pc_common.config import NodeConfig
    from pc_node import admin
    wages = _write_csv(tmp_path / "in" / "wages.csv", ["id_number", "monthly_income"], [[k, "1.00"] for k in _ids(2)])
    with admin.NodeAdmin(NodeConfig.load(node_config)) as node:
        assert not node.imported_unchanged(wages)
        assert node.import_dataset(wages).imported == 2
        assert node.imported_unchanged(wages)
        _write_csv(wages, ["id_number", "monthly_income"], [[k, "2.00"] for k in _ids(3)])
        assert not node.imported_unchanged(wages)


def test_the_sdk_knows_no_sandbox_or_server():
    import subprocess
    import sys
    code = ("import sys, pc_client.sdk; print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('pc_node', 'pc_coordinator', 'pc_devkit') or m.startswith(('pc_client.sandbox', 'pc_client.cli'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# ----- the sandbox ------------------------------------------------------------------------------------
RULE = """
id = "nocar"
title = "No car in the household"
purpose = "social_assistance.eligibility"
requester = "civil_affairs"
subject_column = "id_number"
group_column = "household_id"
reveal = "verdict"

[[criteria]]
name = "no_car"
type = "none_exists"
source = "public_security.vehicles"
where = "vehicle_type != 'motorcycle'"
"""


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    d = tmp_path_factory.mktemp("sandbox") / "town"
    p = _ids(7, start=10)
    # Households: H1 (no vehicle), H2 (a car), H3 (only a motorcycle).
    members = [(p[0], "H1", "王芳"), (p[1], "H1", "李强"), (p[2], "H2", "张伟"), (p[3], "H2", "刘洋"),
               (p[4], "H3", "陈静"), (p[5], "H3", "杨磊")]
    _write_csv(d / "civil_affairs" / "applicants.csv", ["id_number", "household_id", "name"],
               [list(m) for m in members])
    _write_csv(d / "public_security" / "vehicles.csv", ["id_number", "plate", "vehicle_type"],
               [[p[3], "粤B12345", "car"], [p[4].lower(), "粤B6M001", "motorcycle"], [p[6], "粤B99999", "car"]])
    (d / "rules").mkdir()
    (d / "rules" / "nocar.toml").write_text(RULE, encoding="utf-8")
    # Subjects in an order that is not grouped, to check the output keeps the input order.
    order = [2, 0, 4, 1, 3, 5]
    subjects = _write_csv(d.parent / "subjects.csv", ["id_number", "household_id"],
                          [[members[i][0], members[i][1]] for i in order])
    expected = [[members[i][0], members[i][1], "false" if members[i][1] == "H2" else "true"] for i in order]
    try:
        assert main(["sandbox", "up", str(d)]) == 0
        yield {"dir": d, "rule": d / "rules" / "nocar.toml", "subjects": subjects, "expected": expected, "state": {}}
    finally:
        main(["sandbox", "down", str(d)])


def test_sandbox_catalog_json(sandbox, capsys):
    capsys.readouterr()
    assert main(["catalog", "--sandbox", str(sandbox["dir"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {f"{d['agency']}.{d['name']}": (d["key_column"], int(d["rows"]), [c["name"] for c in d["columns"]])
           for d in doc}
    # Every column is published, the key column first.
    assert got == {"civil_affairs.applicants": ("id_number", 6, ["id_number", "household_id", "name"]),
                   "public_security.vehicles": ("id_number", 3, ["id_number", "plate", "vehicle_type"])}
    vehicles = next(d for d in doc if d["name"] == "vehicles")
    grant = next(g for g in vehicles["grants"] if "social_assistance.eligibility" in g["purposes"])
    assert grant["requester"] == "civil_affairs" and grant["column_uses"]["vehicle_type"] == "predicate"


def test_sandbox_verify_writes_the_results_file(sandbox, capsys, tmp_path):
    capsys.readouterr()
    out = tmp_path / "verdicts.csv"
    rc = main(["verify", "--sandbox", str(sandbox["dir"]), "--rule", str(sandbox["rule"]),
               "--subjects", str(sandbox["subjects"]), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "id_number,household_id,eligible"
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    assert rows == sandbox["expected"]
    assert "2 of 3 group(s) eligible" in captured.out and "6 row(s)" in captured.out
    assert "Leakage report" in captured.out

    # Errors are one line, with a non-zero exit and no results file.
    bad = tmp_path / "nogroup.csv"
    _write_csv(bad, ["id_number"], [[sandbox["expected"][0][0]]])
    rc = main(["verify", "--sandbox", str(sandbox["dir"]), "--rule", str(sandbox["rule"]),
               "--subjects", str(bad), "--out", str(tmp_path / "x.csv")])
    assert rc != 0 and "household_id" in _one_line_error(capsys.readouterr())
    assert not (tmp_path / "x.csv").exists()
    rc = main(["verify", "--sandbox", str(sandbox["dir"]), "--rule", str(tmp_path / "none.toml"),
               "--subjects", str(bad), "--out", str(tmp_path / "x.csv")])
    assert rc != 0
    _one_line_error(capsys.readouterr())


def test_sandbox_jobs_and_leakage_report(sandbox, capsys):
    capsys.readouterr()
    d = str(sandbox["dir"])
    assert main(["jobs", "--sandbox", d, "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    done = [j for j in jobs if j["kind"] == "verify" and j["state"] == "succeeded"]
    assert done, jobs
    job = done[0]
    assert job["requester"] == "civil_affairs" and job["providers"] == ["public_security"]
    assert job["summary"]["subjects"] == 6 and job["summary"]["groups"] == 3
    assert main(["jobs", "show", job["job_id"], "--sandbox", d]) == 0
    out = capsys.readouterr().out
    assert f"job {job['job_id']}" in out and "succeeded" in out
    assert "Leakage report — who learned what:" in out
    for party in ("coordinator:", "civil_affairs:", "public_security:"):
        assert party in out
    assert main(["jobs", "show", "ffffffffffffffffffffffff", "--sandbox", d]) != 0
    assert "NOT_FOUND" in _one_line_error(capsys.readouterr())


def test_sandbox_audit_detects_an_edit(sandbox, capsys):
    d = sandbox["dir"]
    capsys.readouterr()
    assert main(["audit", "verify", "--sandbox", str(d), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["party"] for r in report} == {"coordinator", "civil_affairs", "public_security"}
    assert all(r["ok"] and r["entries"] > 0 for r in report), report

    db = d / ".sandbox" / "public_security" / "audit.db"
    con = sqlite3.connect(db)
    try:
        with con:
            n = con.execute("UPDATE audit_log SET requester = 'someone_else' WHERE seq = "
                            "(SELECT MAX(seq) FROM audit_log WHERE requester IS NOT NULL)").rowcount
    finally:
        con.close()
    assert n == 1
    assert main(["audit", "verify", "--sandbox", str(d)]) != 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("public_security"))
    assert "TAMPERED" in line
    assert all("ok" in ln for ln in out.splitlines() if ln.startswith(("coordinator", "civil_affairs")))
