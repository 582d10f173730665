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


def _attach_changing(pg_env, postgres, city, name: str):
    city_dir, _ = city
    postgres.load_csv(f"public.{name}", city_dir / PS / "vehicles.csv")
    fed = pg_env["fed"]
    with admin.NodeAdmin(fed.node_config(PS)) as node:
        node.attach_dataset(name, f"public.{name}", dsn_file=pg_env["dsn_file"])
    fed.write_policy(PS, (fed.root / PS / "policy.toml").read_text() + GRANTS.replace("vehicles_pg", name))
    return fed


def test_the_lookup_filter_notices_a_changed_attached_table(pg_env, postgres, city, tmp_path):
    fed = _attach_changing(pg_env, postgres, city, "changing")

    def lookup(n):
        with fed.client("analyst@" + REQUESTER) as c:
            assert c.lookup(f"{REQUESTER}.queries", f"{PS}.changing", out=tmp_path / f"l{n}.csv").state == "succeeded"
        return dict(line.split(",")[:2] for line in _result(tmp_path / f"l{n}.csv") if "," in line)
    first = lookup(1)
    absent = sorted(k for k, v in first.items() if v == "false")
    assert absent and lookup(2) == first                    # unchanged table: the cached filter
    with postgres.connect() as conn:
        conn.execute("INSERT INTO public.changing (id_number, plate) VALUES (%s, 'NEW')", (absent[0],))
    third = lookup(3)
    assert third[absent[0]] == "true" and {k: v for k, v in third.items() if k != absent[0]} == \
        {k: v for k, v in first.items() if k != absent[0]}


def test_stamp_and_catalog_row_count_follow_the_table(pg_env, postgres, city):
    fed = _attach_changing(pg_env, postgres, city, "counted")
    with admin.NodeAdmin(fed.node_config(PS)) as node:
        store = node._store
        before = store.dataset("counted").rows
        stamp = store.change_stamp("counted")
        assert store.change_stamp("counted") == stamp
        with postgres.connect() as conn:
            conn.execute("DELETE FROM public.counted WHERE ctid IN (SELECT ctid FROM public.counted LIMIT 2)")
        assert store.change_stamp("counted") != stamp
        stamp = store.change_stamp("counted")
        with postgres.connect() as conn:
            conn.execute("UPDATE public.counted SET plate = 'X' WHERE ctid IN (SELECT ctid FROM public.counted LIMIT 1)")
        assert store.change_stamp("counted") != stamp
        assert store.dataset("counted").rows == before        # until a job reads the table
        store.keys("counted")
        assert store.dataset("counted").rows == before - 2


def test_rows_for_keys_reads_only_the_needed_columns_by_the_index(pg_env, postgres, city):
    city_dir, _ = city
    _, rows = read_csv(city_dir / PS / "vehicles.csv")
    with postgres.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS public.fixed")
        conn.execute("CREATE TABLE public.fixed (id_number char(18), plate text, vehicle_type text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO public.fixed VALUES (%s, %s, %s)",
                            [(r["id_number"], r["plate"], r["vehicle_type"]) for r in rows if len(r["id_number"]) == 18])
        conn.execute("CREATE INDEX ON public.fixed (id_number)")
        conn.execute("ANALYZE public.fixed")
    with admin.NodeAdmin(pg_env["fed"].node_config(PS)) as node:
        node.attach_dataset("fixed", "public.fixed", dsn_file=pg_env["dsn_file"])
        store = node._store
        keys = sorted({r["id_number"] for r in rows if len(r["id_number"]) == 18 and r["id_number"].isdigit()})[:5]
        full = store.rows_for_keys("fixed", keys)
        plates = store.rows_for_keys("fixed", keys, columns=["plate"])
        source = store.source("fixed")
    assert len(full) == 5 and plates == {k: [[r[0], ""] for r in v] for k, v in full.items()}
    with postgres.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            b"EXPLAIN " + source._select("key", ["plate"]).as_bytes(conn), (keys,)))
    assert "Index" in plan, plan


def test_a_postgres_toml_attaches_like_the_sandbox_does(pg_env, tmp_path):
    from pc_client import sandbox
    folder = tmp_path / "city" / PS
    folder.mkdir(parents=True)
    (folder / "cars.postgres.toml").write_text(
        f'table = "{PS}.vehicles"\ndsn = "{pg_env["dsn_file"].read_text().strip()}"\nkey = "id_number"\n'
        'description = "Vehicles, attached"\n[columns.plate]\ndescription = "Plate number"\nsensitivity = 4\n')
    assert sandbox.agencies_of(tmp_path / "city") == [PS]
    with admin.NodeAdmin(pg_env["fed"].node_config(PS)) as node:
        rep = node.attach_from_file(folder / "cars.postgres.toml")
        meta = node.dataset("cars")
        assert rep.rows > 0 and meta.description == "Vehicles, attached"
        plate = next(c for c in meta.columns if c.name == "plate")
        assert (plate.description, plate.sensitivity, plate.type) == ("Plate number", 4, "text")
        (folder / "bad.postgres.toml").write_text('table = "x.y"\npassword = "p"\n')
        with pytest.raises(InvalidInput, match="bad.postgres.toml"):
            node.attach_from_file(folder / "bad.postgres.toml")


def test_sandbox_up_attaches_a_postgres_toml_instead_of_importing(postgres, tmp_path, capsys):
    """`pc sandbox up` on a town whose vehicles live in PostgreSQL: same verdicts as from a CSV."""
    from tests.integration.test_cli import RULE, _ids
    d = tmp_path / "town"
    p = _ids(7, start=30)
    members = [(p[0], "H1"), (p[1], "H1"), (p[2], "H2"), (p[3], "H2"), (p[4], "H3"), (p[5], "H3")]
    write_csv(d / "civil_affairs" / "applicants.csv", ["id_number", "household_id"], [list(m) for m in members])
    vehicles = write_csv(tmp_path / "vehicles.csv", ["id_number", "plate", "vehicle_type"],
                         [[p[3], "粤B12345", "car"], [p[4].lower(), "粤B6M001", "motorcycle"], [p[6], "粤B9", "car"]])
    postgres.load_csv("town.vehicles", vehicles)
    (d / "public_security").mkdir()
    (d / "public_security" / "vehicles.postgres.toml").write_text(
        f'table = "town.vehicles"\ndsn = "{postgres.dsn} password={SECRET}"\n'
        '[columns.vehicle_type]\ndescription = "Kind of vehicle"\n', encoding="utf-8")
    (d / "rules").mkdir()
    (d / "rules" / "nocar.toml").write_text(RULE, encoding="utf-8")
    try:
        assert cli_main(["sandbox", "up", str(d)]) == 0
        capsys.readouterr()
        assert cli_main(["catalog", "--sandbox", str(d), "--json"]) == 0
        catalog = capsys.readouterr().out
        assert '"vehicles"' in catalog and "Kind of vehicle" in catalog and SECRET not in catalog
        out = tmp_path / "verdicts.csv"
        assert cli_main(["verify", "--sandbox", str(d), "--rule", str(d / "rules" / "nocar.toml"),
                         "--subjects", str(d / "civil_affairs" / "applicants.csv"), "--out", str(out)]) == 0
        got = [tuple(r) for r in csv.reader(open(out, encoding="utf-8"))][1:]
        assert got == [(i, h, "false" if h == "H2" else "true") for i, h in members]
    finally:
        cli_main(["sandbox", "down", str(d)])
