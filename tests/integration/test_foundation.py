"""Foundation: import into the node store, the catalog through the coordinator, restarts,
liveness in the directory, health and reflection services, generated code, listening."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import pathlib
import subprocess
import sys
import time

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pc_common import certs, tls
from pc_node import idnum
from pc_common.errors import AlreadyExists, InvalidInput
from pc_common.pb import common_pb2
from pc_node.importer import import_file
from pc_node.runtime import open_cipher
from pc_node.store import NodeStore

from tests.conftest import REQUESTER, subset_subjects, write_csv

ROOT = pathlib.Path(__file__).resolve().parents[2]


# ----- helpers --------------------------------------------------------------------------------
def ids(n: int, start: int = 1) -> list[str]:
    return [idnum.make_id("440305", dt.date(1970, 1, 1) + dt.timedelta(days=37 * i), 100 + i)
            for i in range(start, start + n)]


def bad_check_digit(ident: str) -> str:
    wrong = next(c for c in "0123456789X" if c != ident[17])
    return ident[:17] + wrong


def snapshot(store: NodeStore) -> list[tuple]:
    return [(m.name, m.rows, m.version, m.key_column, tuple((c.name, c.type) for c in m.columns))
            for m in store.datasets()]


@pytest.fixture
def store(tmp_path):
    s = NodeStore(tmp_path / "node.db", open_cipher(tmp_path, tmp_path / "master.key"))
    yield s
    s.close()


@pytest.fixture
def people(tmp_path, store):
    """A store that already holds one dataset ('people', 3 rows)."""
    src = tmp_path / "in"
    src.mkdir()
    path = write_csv(src / "people.csv", ["id_number", "plate", "amount"],
                     [[i, f"粤B{n:05d}", f"{n * 100}.50"] for n, i in enumerate(ids(3))])
    import_file(store, path)
    return src


# ----- import -----------------------------------------------------------------------------------
def test_import_is_all_or_nothing(store, people):
    before = snapshot(store)
    keys_before = store.keys("people")
    good = ids(4, start=10)
    bad = bad_check_digit(good[2])
    path = write_csv(people / "more.csv", ["id_number", "plate"], [[good[0], "a"], [good[1], "b"], [bad, "c"],
                                                                  [good[3], "d"]])
    with pytest.raises(InvalidInput) as err:
        import_file(store, path)
    msg = str(err.value)
    assert "row 4" in msg and "check digit" in msg and "nothing imported" in msg
    assert bad not in msg and bad[:17] not in msg, "errors must not echo identifiers"
    assert snapshot(store) == before

    # The same bad file may not replace an existing dataset either: the old one stays whole.
    with pytest.raises(InvalidInput):
        import_file(store, path, dataset="people", replace=True)
    assert snapshot(store) == before
    assert store.keys("people") == keys_before


def test_skip_invalid_imports_good_rows_and_writes_rejects(store, tmp_path):
    good = ids(3, start=20)
    rows = [[good[0], "1.00"],
            [bad_check_digit(good[1]), "2.00"],     # row 3
            [good[1], "3.00", "extra"],            # row 4: wrong field count
            ["12345", "4.00"],                     # row 5: wrong length
            [good[2].lower() if good[2].endswith("X") else " " + good[2] + " ", "5.00"]]
    path = write_csv(tmp_path / "wages.csv", ["id_number", "monthly_income"], rows)
    with pytest.raises(InvalidInput):
        import_file(store, path)
    rejects = tmp_path / "out" / "rejects.csv"
    rejects.parent.mkdir()
    rep = import_file(store, path, skip_invalid=True, rejects=rejects)
    assert (rep.imported, rep.rejected, rep.rejects_file) == (2, 3, str(rejects))
    assert store.dataset("wages").rows == 2
    assert sorted(store.keys("wages")) == sorted([good[0], good[2]])
    with open(rejects, newline="", encoding="utf-8") as fh:
        got = list(csv.reader(fh))
    assert got[0][:2] == ["row", "reason"]
    assert [r[0] for r in got[1:]] == ["3", "4", "5"]
    reasons = [r[1] for r in got[1:]]
    assert "check digit" in reasons[0]
    assert "expected 2 fields, found 3" in reasons[1]
    assert "wrong length" in reasons[2]

    # Default rejects location: next to the input file.
    rep = import_file(store, path, dataset="wages2", skip_invalid=True)
    assert rep.rejects_file == str(tmp_path / "wages.rejects.csv")
    assert pathlib.Path(rep.rejects_file).exists()


def test_import_parquet(store, tmp_path):
    keys = ids(3, start=30)
    table = pa.table({"id_number": pa.array([keys[0].lower(), keys[1], keys[2]]),
                      "plate": pa.array(["粤B11111", None, "粤B33333"]),
                      "seats": pa.array([5, 7, 2], type=pa.int64()),
                      "amount": pa.array(["10.50", "20.00", "0.01"])})
    path = tmp_path / "cars.parquet"
    pq.write_table(table, path)
    rep = import_file(store, path)
    assert rep.dataset == "cars" and rep.imported == 3
    assert {c.name: c.type for c in rep.columns} == {"plate": "text", "seats": "integer", "amount": "decimal"}
    assert store.keys("cars") == [k.upper() for k in keys]
    found = store.rows_for_keys("cars", [keys[0].upper(), keys[1]])
    assert found[keys[0].upper()] == [["粤B11111", "5", "10.50"]]
    assert found[keys[1]] == [["", "7", "20.00"]]

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        import_file(store, broken)


def test_metadata_toml_types_and_catalog_fields(store, tmp_path):
    keys = ids(2, start=40)
    path = write_csv(tmp_path / "codes.csv", ["id_number", "code", "amount", "day"],
                     [[keys[0], "101", "12.50", "2024-01-02"], [keys[1], "102", "3", "2023-12-31"]])
    # Inferred without metadata.
    rep = import_file(store, path, dataset="inferred")
    assert {c.name: c.type for c in rep.columns} == {"code": "integer", "amount": "decimal", "day": "date"}
    # Leading zeros mark codes ('007'), which stay text.
    zeros = write_csv(tmp_path / "zeros.csv", ["id_number", "code"], [[keys[0], "007"], [keys[1], "12"]])
    assert [c.type for c in import_file(store, zeros, dataset="zeros").columns] == ["text"]
    # Metadata wins over inference and fills the catalog fields.
    (tmp_path / "codes.toml").write_text(
        'description = "Codes"\n[columns.code]\ntype = "text"\ndescription = "Branch code"\n'
        'sharing = "open"\nsensitivity = 1\n[columns.amount]\ntype = "decimal"\nunit = "CNY"\n')
    rep = import_file(store, path)
    meta = store.dataset("codes")
    assert meta.description == "Codes"
    cols = {c.name: c for c in meta.columns}
    assert cols["code"].type == "text" and cols["code"].sharing == "open" and cols["code"].sensitivity == 1
    assert cols["code"].description == "Branch code"
    assert cols["amount"].unit == "CNY" and cols["day"].type == "date"
    assert store.rows_for_keys("codes", [keys[0]])[keys[0]] == [["101", "12.50", "2024-01-02"]]

    # A value that does not fit the declared type is refused with its row.
    path2 = write_csv(tmp_path / "typed.csv", ["id_number", "amount"], [[keys[0], "1.00"], [keys[1], "abc"]])
    (tmp_path / "typed.toml").write_text('[columns.amount]\ntype = "decimal"\n')
    with pytest.raises(InvalidInput, match=r"row 3: amount: not a valid decimal"):
        import_file(store, path2)
    # Bad metadata files.
    (tmp_path / "typed.toml").write_text('[columns.amount]\ntype = "float"\n')
    with pytest.raises(InvalidInput, match="type must be one of"):
        import_file(store, path2)
    (tmp_path / "typed.toml").write_text('owner = "me"\n')
    with pytest.raises(InvalidInput, match="unknown key 'owner'"):
        import_file(store, path2)
    (tmp_path / "typed.toml").write_text('[columns.nope]\ntype = "text"\n')
    with pytest.raises(InvalidInput, match="'nope'"):
        import_file(store, path2)
    assert "typed" not in [m.name for m in store.datasets()]


def test_duplicate_import_needs_replace(store, people):
    before = snapshot(store)
    path = write_csv(people / "people.csv", ["id_number", "plate", "amount"], [[ids(1, 50)[0], "x", "1.00"]])
    with pytest.raises(AlreadyExists, match="already exists"):
        import_file(store, path)
    assert snapshot(store) == before
    import_file(store, path, replace=True)
    meta = store.dataset("people")
    assert (meta.rows, meta.version) == (1, 2)
    assert store.keys("people") == [ids(1, 50)[0]]


def test_dropped_and_reimported_dataset_shows_new_rows(store, tmp_path):
    first, second = ids(2, 90), ids(3, 95)
    path = write_csv(tmp_path / "cars.csv", ["id_number", "plate"], [[k, "a"] for k in first])
    import_file(store, path)
    assert store.keys("cars") == first
    store.drop_dataset("cars")
    write_csv(path, ["id_number", "plate"], [[k, "b"] for k in second])
    import_file(store, path)
    assert store.dataset("cars").rows == 3
    assert store.keys("cars") == second


def test_malformed_csv_files_are_refused(store, tmp_path):
    k = ids(1, 60)[0]
    cases = {
        "quote.csv": (f'id_number,plate\n{k},"unterminated\n'.encode(), "malformed CSV"),
        "latin.csv": (f"id_number,plate\n{k},".encode() + "é".encode("latin-1") + b"\n", "not UTF-8"),
        "empty.csv": (b"", "empty file"),
        "dupe.csv": (f"id_number,plate,plate\n{k},a,b\n".encode(), "duplicate column"),
        "cols.csv": (f"id_number,bad-name\n{k},a\n".encode(), "not allowed"),
        "norows.csv": (b"id_number,plate\n", "no valid rows"),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidInput, match=expected):
            import_file(store, tmp_path / name)
    with pytest.raises(InvalidInput, match="no such file"):
        import_file(store, tmp_path / "missing.csv")
    assert store.datasets() == []


def test_key_column(store, tmp_path):
    keys = ids(2, 70)
    path = write_csv(tmp_path / "owners.csv", ["pid", "plate"], [[keys[0], "a"], [keys[1], "b"]])
    with pytest.raises(InvalidInput, match="key column 'id_number' not in the header"):
        import_file(store, path)
    (tmp_path / "owners.toml").write_text('key_column = "owner_id"\n')
    with pytest.raises(InvalidInput, match="key column 'owner_id' not in the header"):
        import_file(store, path)
    (tmp_path / "owners.toml").write_text('key_column = "pid"\n')
    import_file(store, path)
    assert store.dataset("owners").key_column == "pid"
    assert store.keys("owners") == keys
    assert [c.name for c in store.dataset("owners").columns] == ["plate"]


# ----- catalog through the coordinator ----------------------------------------------------------
def test_catalog_lists_every_dataset_and_column(fed, city):
    from pc_devkit.synth_city import DATASETS
    _, summary = city
    with fed.client("analyst@" + REQUESTER) as c:
        cat = {f"{d.agency}.{d.name}": d for d in c.catalog().datasets}
    assert set(DATASETS) <= set(cat)
    for ref, spec in DATASETS.items():
        d = cat[ref]
        assert d.key_column == "id_number"
        assert d.rows == summary.rows[ref]
        assert d.description == spec["description"]
        got = {col.name: (col.type, col.sharing, col.sensitivity, col.unit) for col in d.columns}
        want = {name: (ctype, sharing, sens, unit or "") for name, ctype, _desc, sharing, sens, unit in spec["columns"]}
        assert got == want, ref       # every column, the key column included with its metadata
        assert d.columns[0].name == "id_number"
    # Published grants: what the rules need, e.g. the vehicles' type as a predicate for civil affairs.
    vehicles = cat["public_security.vehicles"]
    grants = [g for g in vehicles.grants if g.requester == REQUESTER and
              "social_assistance.eligibility" in g.purposes]
    assert grants and grants[0].column_uses["vehicle_type"] == "predicate"
    assert "plate" not in grants[0].column_uses


def test_catalog_follows_imports(fed, tmp_path):
    agency = "market_regulation"
    path = write_csv(tmp_path / "licences.csv", ["id_number", "licence"], [[k, "L1"] for k in ids(2, 80)])
    fed.import_csv(agency, path)
    try:
        with fed.client() as c:
            d = {f"{d.agency}.{d.name}": d for d in c.catalog().datasets}
        assert d[f"{agency}.licences"].rows == 2
        assert [col.name for col in d[f"{agency}.licences"].columns] == ["id_number", "licence"]
    finally:
        fed.runtime(agency).store.drop_dataset("licences")
        fed.publish(agency)
    with fed.client() as c:
        assert f"{agency}.licences" not in {f"{d.agency}.{d.name}" for d in c.catalog().datasets}


# ----- restarts and liveness ---------------------------------------------------------------------
def _node_status(fed, node_id):
    with fed.client() as c:
        return {n.node_id: n for n in c.nodes()}[node_id]


def _wait(predicate, timeout=15.0, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_node_goes_offline_and_survives_restart(fed):
    agency = "housing"
    directory = fed.coordinator[1].directory
    rt = fed.runtime(agency)
    before = snapshot(rt.store)
    keys_before = rt.store.keys("properties")[:5]
    old_address = rt.address
    assert _node_status(fed, agency).online
    directory.offline_after = 2
    try:
        fed.stop_node(agency)
        assert _wait(lambda: not _node_status(fed, agency).online, timeout=10), "stopped node still online"
        st = _node_status(fed, agency)
        assert st.address == old_address
        # The catalog entry stays (the directory remembers), marked by the node being offline.
        rt = fed.start_node(agency)
        assert _wait(lambda: _node_status(fed, agency).online, timeout=10)
    finally:
        directory.offline_after = fed.coordinator_config.offline_after_seconds
        if agency not in fed.nodes:
            fed.start_node(agency)
    rt = fed.runtime(agency)
    assert snapshot(rt.store) == before
    assert rt.store.keys("properties")[:5] == keys_before
    assert _node_status(fed, agency).address == rt.address
    with fed.client("analyst@" + agency) as c:
        info = c.node.GetInfo(common_pb2.Empty(), timeout=10)
        assert (info.node_id, info.datasets) == (agency, len(before))
        cat = {d.name: d.rows for d in c.catalog().datasets if d.agency == agency}
    assert cat == {name: rows for name, rows, *_ in before}


def test_jobs_and_catalog_survive_coordinator_restart(fed, city, tmp_path):
    city_dir, _ = city
    subjects = tmp_path / "subjects.csv"
    subset_subjects(city_dir / "civil_affairs" / "applicants.csv", subjects, 4)
    with fed.client("analyst@" + REQUESTER) as c:
        res = c.verify(city_dir / "rules" / "gaoling.toml", subjects, out=tmp_path / "before.csv")
        catalog_before = c.catalog().SerializeToString(deterministic=True)
    port = fed.coordinator_port
    fed.stop_coordinator()
    with pytest.raises(grpc.RpcError):
        with fed.client() as c:
            c.timeout = 2
            c.jobs()
    fed.coordinator_config.listen = f"127.0.0.1:{port}"
    try:
        fed.start_coordinator()
    finally:
        fed.coordinator_config.listen = "127.0.0.1:0"
    assert fed.coordinator_port == port
    with fed.client("analyst@" + REQUESTER) as c:
        jobs = {j.job_id: j for j in c.jobs()}
        assert jobs[res.job_id].state == "succeeded"
        job = c.job(res.job_id)
        assert job.state == "succeeded" and job.leakage_json and "coordinator" in job.leakage_json
        assert c.catalog().SerializeToString(deterministic=True) == catalog_before
    # Nodes keep heartbeating to the restarted coordinator, and jobs run again.
    assert _wait(lambda: all(_node_status(fed, a).online for a in fed.agencies), timeout=20)
    with fed.client("analyst@" + REQUESTER) as c:
        again = c.verify(city_dir / "rules" / "gaoling.toml", subjects, out=tmp_path / "after.csv")
    assert again.job_id != res.job_id
    assert (tmp_path / "before.csv").read_bytes() == (tmp_path / "after.csv").read_bytes()


# ----- health, reflection, generated code, listening ---------------------------------------------
def _servers(fed):
    op = certs.client_files(fed.certs, "platform", "operator")
    agency = fed.agencies[0]
    return [(f"127.0.0.1:{fed.coordinator_port}", "coordinator", "pc.v1.Coordinator", op),
            (f"127.0.0.1:{fed.nodes[agency][2]}", agency, "pc.v1.Node", op)]


def test_health_service_answers_serving(fed):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    for address, name, service, files in _servers(fed):
        with tls.secure_channel(address, files, name) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    address, name, service, files = _servers(fed)[0]
    with tls.secure_channel(address, files, name) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="no.such.Service"),
                                                 timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(fed):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    for address, name, service, files in _servers(fed):
        with tls.secure_channel(address, files, name) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                     timeout=10))
            names = {s.name for s in replies[0].list_services_response.service}
            assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names, names
            # The service's descriptor is served too (grpcurl needs it).
            replies = list(stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)]), timeout=10))
            assert replies[0].file_descriptor_response.file_descriptor_proto


def test_generated_protos_are_current():
    proc = subprocess.run([sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_port_in_use_is_a_clear_error(fed, tmp_path):
    import socket
    from pc_coordinator import server as coordinator_server
    from pc_node import server as node_server
    taken = f"127.0.0.1:{fed.coordinator_port}"          # held by a running gRPC server
    cfg = dataclasses.replace(fed.coordinator_config, listen=taken, data_dir=tmp_path / "c2")
    with pytest.raises(InvalidInput, match=f"cannot listen on {taken}"):
        coordinator_server.create_server(cfg)
    with socket.socket() as sock:                          # held by some other program
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        other = f"127.0.0.1:{sock.getsockname()[1]}"
        ncfg = dataclasses.replace(fed.node_config("tax"), listen=other, data_dir=tmp_path / "n2",
                                   policy=tmp_path / "n2" / "policy.toml", master_key_file=tmp_path / "n2.key")
        with pytest.raises(InvalidInput, match=f"cannot listen on {other}"):
            node_server.create_server(ncfg)
    ncfg = dataclasses.replace(ncfg, listen=taken)
    with pytest.raises(InvalidInput, match="cannot listen"):
        node_server.create_server(ncfg)
    # The federation is untouched.
    with fed.client() as c:
        assert c.catalog().datasets
