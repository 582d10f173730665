"""Attached PostgreSQL tables (``pc node attach``) against a real throw-away cluster
(``postgres`` fixture: initdb + pg_ctl on a Unix socket in a temporary directory).

Every provider dataset of the small city is loaded into PostgreSQL and attached, under the same
name, at a second federation's nodes; a verification there must give the same verdicts as the
shared federation's CSV-imported copy. PSI and a lookup against an attached table must equal
the same against its imported copy; bad DSNs, a missing table or key column and a table gone
at job time each get one clear line, and the node keeps serving; no credential reaches the
catalog, the audit logs or any file of the federation.
"""
from __future__ import annotations

import csv
import pathlib

import pytest

from pc_client.cli import main as cli_main
from pc_client.sdk import JobFailed
from pc_common.errors import FailedPrecondition, InvalidInput
from pc_node import admin

from tests.conftest import REQUESTER, city_agencies, read_csv, write_csv

PS = "public_security"
SECRET = "pw-Zq81-do-not-leak"
GRANTS = f"""
[[grants]]
dataset = "vehicles_pg"
requester = "{REQUESTER}"
purposes = ["data_matching"]
[grants.columns]
id_number = "join_key"
plate = "masked"

[[grants]]
dataset = "vehicles_csv"
requester = "{REQUESTER}"
purposes = ["data_matching"]
[grants.columns]
id_number = "join_key"
plate = "masked"
"""


@pytest.fixture(scope="module")
def pg_env(postgres, city, new_federation, tmp_path_factory):
    city_dir, _ = city
    fed = new_federation("pgfed", city=city_dir)
    data = tmp_path_factory.mktemp("pgdata")
    dsn_file = data / "dsn.txt"
    dsn_file.write_text(f"{postgres.dsn} password={SECRET}\n")
    attached = {}
    for agency in city_agencies(city_dir):
        if agency == REQUESTER:
            continue
        for path in sorted((city_dir / agency).glob("*.csv")):
            postgres.load_csv(f"{agency}.{path.stem}", path)
            with admin.NodeAdmin(fed.node_config(agency)) as node:
                attached[(agency, path.stem)] = node.attach_dataset(
                    path.stem, f"{agency}.{path.stem}", dsn_file=dsn_file,
                    metadata=path.with_suffix(".toml"), replace=True)
            fed.publish(agency)
    # PSI / lookup: the same vehicles attached (vehicles_pg) and imported (vehicles_csv).
    vehicles = city_dir / PS / "vehicles.csv"
    with admin.NodeAdmin(fed.node_config(PS)) as node:
        node.attach_dataset("vehicles_pg", f"{PS}.vehicles", dsn=f"{postgres.dsn} password={SECRET}")
    fed.import_csv(PS, vehicles, dataset="vehicles_csv")
    policy = (fed.root / PS / "policy.toml").read_text()
    fed.write_policy(PS, policy + GRANTS)
    _, rows = read_csv(vehicles)
    applicants = [r["id_number"] for r in read_csv(city_dir / REQUESTER / "applicants.csv")[1]]
    queries = [r["id_number"] for r in rows[:40]] + applicants[:40]
    fed.import_csv(REQUESTER, write_csv(data / "queries.csv", ["id_number"], [[q] for q in queries]),
                   dataset="queries")
    return {"fed": fed, "attached": attached, "data": data, "dsn_file": dsn_file}


def test_attached_datasets_are_in_the_catalog_like_imported_ones(pg_env, fed):
    with fed.client("analyst@" + REQUESTER) as c:
        imported = {_name(d): d for d in c.catalog().datasets}
    with pg_env["fed"].client("analyst@" + REQUESTER) as c:
        catalog = c.catalog()
    text = str(catalog)
    assert SECRET not in text and "dsn" not in text.lower()
    for (agency, name), rep in pg_env["attached"].items():
        assert rep.rows > 0 and rep.skipped == 0
        assert f"{name}" in text
    attached = {_name(d): d for d in catalog.datasets}
    for key in (f"{a}.{n}" for a, n in pg_env["attached"]):
        assert str(attached[key].columns) == str(imported[key].columns)
        assert attached[key].rows == imported[key].rows if hasattr(imported[key], "rows") else True


def _name(d) -> str:
    return f"{d.node_id}.{d.name}" if hasattr(d, "node_id") else f"{d.agency}.{d.name}"


def test_superuser_role_and_missing_index_are_warned(pg_env, postgres, city):
    rep = next(iter(pg_env["attached"].values()))
    assert any("can write" in w for w in rep.warnings)       # the test cluster's role is a superuser
    assert not any("no index" in w for w in rep.warnings)
    city_dir, _ = city
    postgres.load_csv("public.noindex", city_dir / PS / "vehicles.csv", index=False)
    with admin.NodeAdmin(pg_env["fed"].node_config(PS)) as node:
        rep = node.attach_dataset("noindex", "noindex", dsn_file=pg_env["dsn_file"])
    assert any("no index" in w for w in rep.warnings)


def test_verification_against_attached_tables_equals_the_imported_copy(pg_env, fed, city, tmp_path):
    city_dir, _ = city
    outs = []
    for federation, name in ((fed, "imported"), (pg_env["fed"], "attached")):
        out = tmp_path / f"{name}.csv"
        with federation.client("analyst@" + REQUESTER) as c:
            res = c.verify(city_dir / "rules" / "dibao.toml", city_dir / REQUESTER / "applicants.csv", out=out)
        assert res.state == "succeeded"
        outs.append(sorted(map(tuple, csv.reader(open(out, encoding="utf-8")))))
    assert len(outs[0]) > 10
    assert outs[0] == outs[1]


def _result(path) -> list[str]:
    return sorted(pathlib.Path(path).read_text(encoding="utf-8").splitlines())


def test_psi_against_an_attached_table_equals_the_imported_copy(pg_env, tmp_path):
    with pg_env["fed"].client("analyst@" + REQUESTER) as c:
        got = {}
        for ds in ("vehicles_pg", "vehicles_csv"):
            res = c.psi([f"{REQUESTER}.queries", f"{PS}.{ds}"], out=tmp_path / f"{ds}.csv")
            assert res.state == "succeeded"
            got[ds] = _result(tmp_path / f"{ds}.csv")
    assert len(got["vehicles_csv"]) > 10
    assert got["vehicles_pg"] == got["vehicles_csv"]


def test_lookup_with_masked_labels_against_an_attached_table_equals_the_imported_copy(pg_env, tmp_path):
    with pg_env["fed"].client("analyst@" + REQUESTER) as c:
        got = {}
        for ds in ("vehicles_pg", "vehicles_csv"):
            res = c.lookup(f"{REQUESTER}.queries", f"{PS}.{ds}", out=tmp_path / f"{ds}.csv",
                           labels=["plate"], masked=True)
            assert res.state == "succeeded"
            got[ds] = _result(tmp_path / f"{ds}.csv")
    assert any("true" in line for line in got["vehicles_csv"])
    assert got["vehicles_pg"] == got["vehicles_csv"]


@pytest.mark.parametrize("table, options, error, words", [
    ("public_security.vehicles", {"dsn": f"host=/nonexistent/socket dbname=x user=u password={SECRET}"},
     InvalidInput, "cannot connect"),
    ("public_security.vehicles", {"dsn": f"not a dsn === password={SECRET}"}, InvalidInput, "cannot connect"),
    ("public_security.nope", {}, FailedPrecondition, "not found"),
    ("public_security.vehicles", {"key_column": "owner_id"}, FailedPrecondition, "key column 'owner_id'"),
])
def test_bad_attachments_get_one_clear_line(pg_env, table, options, error, words):
    if "dsn" not in options:
        options = {**options, "dsn_file": pg_env["dsn_file"]}
    with admin.NodeAdmin(pg_env["fed"].node_config(PS)) as node:
        with pytest.raises(error) as exc:
            node.attach_dataset("broken", table, **options)
        assert "broken" not in [m.name for m in node.datasets()]
    message = str(exc.value)
    assert words in message and "\n" not in message and SECRET not in message


def test_cli_attach_prints_the_warnings_and_errors_in_one_line(pg_env, tmp_path, capsys):
    fed = pg_env["fed"]
    cfg = fed.node_config(PS)
    config = tmp_path / "node.toml"
    config.write_text(
        f'node_id = "{cfg.node_id}"\ncoordinator = "{cfg.coordinator}"\ndata_dir = "{cfg.data_dir}"\n'
        f'policy = "{cfg.policy}"\nmaster_key_file = "{cfg.master_key_file}"\n[tls]\ncert = "{cfg.tls.cert}"\n'
        f'key = "{cfg.tls.key}"\nca = "{cfg.tls.ca}"\nsm2_key = "{cfg.sm2_key}"\nx25519_key = "{cfg.x25519_key}"\n')
    assert cli_main(["node", "attach", "--config", str(config), "vehicles_cli", "--table", f"{PS}.vehicles",
                     "--dsn-file", str(pg_env["dsn_file"])]) == 0
    out = capsys.readouterr().out
    assert "attached public_security.vehicles as 'vehicles_cli'" in out and "warning: " in out
    assert cli_main(["node", "attach", "--config", str(config), "x", "--table", f"{PS}.nope",
                     "--dsn-file", str(pg_env["dsn_file"])]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not found" in err


def test_a_table_gone_at_job_time_fails_the_job_clearly_and_the_node_keeps_serving(pg_env, postgres, city, tmp_path):
    city_dir, _ = city
    postgres.load_csv("public.going", city_dir / PS / "vehicles.csv")
    fed = pg_env["fed"]
    with admin.NodeAdmin(fed.node_config(PS)) as node:
        node.attach_dataset("going", "public.going", dsn_file=pg_env["dsn_file"])
    fed.write_policy(PS, (fed.root / PS / "policy.toml").read_text() + GRANTS.replace("vehicles_pg", "going"))
    with postgres.connect() as conn:
        conn.execute("DROP TABLE public.going")
    with fed.client("analyst@" + REQUESTER) as c:
        with pytest.raises(JobFailed) as exc:
            c.psi([f"{REQUESTER}.queries", f"{PS}.going"], out=tmp_path / "gone.csv")
        message = str(exc.value)
        print(message)
        assert "going" in message and "public.going" in message and SECRET not in message
        res = c.psi([f"{REQUESTER}.queries", f"{PS}.vehicles_csv"], out=tmp_path / "still.csv")
        assert res.state == "succeeded"


def test_no_credential_in_any_file_of_the_federation(pg_env):
    """Catalog, audit logs, job store, node stores (encrypted), policies: the password appears nowhere."""
    root = pg_env["fed"].root
    leaks = [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
