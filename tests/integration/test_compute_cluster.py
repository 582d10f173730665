"""A node's heavy batches on a real Dask cluster (docs/compute.md).

A module fixture starts ``dask scheduler`` and two ``dask worker`` processes on loopback (port
0); one federation on the small city has its provider public_security pointed at it. The same
ECDH PSI and the same verification run three ways — the provider local, on the cluster with the
untrusted default (nothing secret may go: no task reaches the scheduler), and on the cluster
declared trusted (scalar multiplications and BFV encryptions run there) — and give identical
results, equal to the plaintext intersection. Bad compute settings stop a node at start with
one line.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="the Dask 'distributed' package is not installed")

from pc_common.errors import FailedPrecondition, InvalidInput  # noqa: E402
from pc_node import compute as compute_mod  # noqa: E402
from pc_node import idnum  # noqa: E402
from pc_node import server as node_server  # noqa: E402
from pc_node.secure_agg import bfv  # noqa: E402
from tests.conftest import REQUESTER, read_csv  # noqa: E402
from tests.fedkit import LocalFederation, sandbox_policy_for_rules  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROVIDER = "public_security"
POOL = [idnum.make_id("320102", dt.date(1950, 1, 1) + dt.timedelta(days=37 * i), (7 * i) % 1000)
        for i in range(300)]
PEOPLE = POOL[:200]
VEHICLE_IDS = POOL[120:]


class ClusterFederation(LocalFederation):
    """A LocalFederation whose nodes' configs can carry compute settings."""

    overrides: dict[str, dict] = {}

    def node_config(self, agency):
        return dataclasses.replace(super().node_config(agency), **self.overrides.get(agency, {}))


@contextlib.contextmanager
def _dask_cluster(tmp: pathlib.Path, tls: list[str] = (), security=None):
    """``(address, client)`` of a scheduler and two one-thread workers, separate processes
    (``tls``: the TLS options given to both, ``security``: the client's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PC_PSI_WORKERS": "1"}
    dask = str(pathlib.Path(sys.executable).parent / "dask")
    sched_file = tmp / "scheduler.json"
    protocol = ["--protocol", "tls"] if tls else []
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               *protocol, *tls, "--scheduler-file", str(sched_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        address = None
        deadline = time.monotonic() + 30
        while address is None and time.monotonic() < deadline:
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
        assert address, "the Dask scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                           "--no-dashboard", *tls, "--local-directory", str(tmp)], env=env,
                                          cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = distributed.Client(address, set_as_default=False, timeout=30, security=security)
        client.wait_for_workers(2, timeout=60)
        yield address, client
        client.shutdown()            # scheduler and workers close at once (SIGTERM waits on nannies)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with _dask_cluster(tmp_path_factory.mktemp("dask")) as both:
        yield both


@pytest.fixture(scope="module")
def fed(city, cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("compute") / "fed"
    city_dir = city[0]
    agencies = sorted(p.name for p in city_dir.iterdir() if p.is_dir() and p.name != "rules")
    federation = ClusterFederation(root, agencies)
    federation.overrides = {}
    federation.start()
    try:
        federation.copy_city(city_dir)
        sandbox_policy_for_rules(city_dir, federation)
        for agency, name, ids in ((REQUESTER, "people", PEOPLE), (PROVIDER, "psi_ids", VEHICLE_IDS)):
            path = root.parent / f"{name}.csv"
            with open(path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows([["id_number"]] + [[i] for i in ids])
            federation.import_csv(agency, path, dataset=name)
        policy = (root / PROVIDER / "policy.toml").read_text()
        federation.write_policy(PROVIDER, policy + f'\n[[grants]]\ndataset = "psi_ids"\nrequester = "{REQUESTER}"\n'
                                'purposes = ["data_matching"]\n[grants.columns]\nid_number = "join_key"\n')
        yield federation
    finally:
        federation.stop()


def _restart_provider(fed, **compute):
    fed.stop_node(PROVIDER)
    fed.overrides = {PROVIDER: compute}
    return fed.start_node(PROVIDER)


def _scheduler_transitions(client) -> int:
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)


def _run_both(fed, city_dir, out: pathlib.Path):
    with fed.client(f"analyst@{REQUESTER}") as c:
        psi = c.psi([f"{REQUESTER}.people", f"{PROVIDER}.psi_ids"], out=out / "psi.csv", protocol="ecdh")
        verify = c.verify(city_dir / "rules" / "dibao.toml", city_dir / REQUESTER / "applicants.csv",
                          out=out / "verdicts.csv")
    assert psi.state == "succeeded" and verify.state == "succeeded"
    return (out / "psi.csv").read_text().splitlines(), read_csv(out / "verdicts.csv")[1]


def test_cluster_gives_identical_results_and_secrets_stay_local_by_default(fed, city, cluster, tmp_path,
                                                                           monkeypatch):
    city_dir = city[0]
    address, client = cluster
    # Small jobs: send even small batches, several tasks each, so the test exercises the cluster.
    monkeypatch.setattr(compute_mod, "PSI_MIN_POINTS", 1)
    monkeypatch.setattr(compute_mod, "PSI_TASK_POINTS", 32)
    monkeypatch.setattr(bfv, "OFFLOAD_MIN_CHUNKS", 1)

    (tmp_path / "local").mkdir()
    local = _run_both(fed, city_dir, tmp_path / "local")
    assert local[0] == ["id_number"] + sorted(set(PEOPLE) & set(VEHICLE_IDS))
    assert len(local[0]) - 1 == len(set(PEOPLE) & set(VEHICLE_IDS)) > 20

    runtime = _restart_provider(fed, compute=address)            # the cluster, untrusted (default)
    assert not runtime.compute.is_local and runtime.compute.secrets == frozenset()
    before = _scheduler_transitions(client)
    (tmp_path / "untrusted").mkdir()
    assert _run_both(fed, city_dir, tmp_path / "untrusted") == local
    assert sum(runtime.compute.submitted.values()) == 0
    assert _scheduler_transitions(client) == before              # not one task reached the scheduler

    runtime = _restart_provider(fed, compute=address, compute_trusted=True)
    (tmp_path / "trusted").mkdir()
    assert _run_both(fed, city_dir, tmp_path / "trusted") == local
    # The provider's two PSI passes (re-encrypting R's set, its own set) and its BFV vectors ran there.
    assert runtime.compute.submitted["psi_scalarmult"] >= 2 * (len(VEHICLE_IDS) // 32)
    assert runtime.compute.submitted["bfv_encrypt"] >= 1
    assert _scheduler_transitions(client) > before
    _restart_provider(fed)


def _start_refused(fed, **settings) -> str:
    cfg = dataclasses.replace(fed.node_config(PROVIDER), listen="127.0.0.1:0", **settings)
    with pytest.raises((InvalidInput, FailedPrecondition)) as exc:
        server, _, runtime = node_server.create_server(cfg)
        server.stop(0)
        runtime.close()
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_bad_compute_settings_stop_the_node_with_one_line(fed, monkeypatch):
    monkeypatch.setattr(compute_mod, "CONNECT_TIMEOUT_S", 1)
    with socket.socket() as s:                                     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    msg = _start_refused(fed, compute=f"tcp://127.0.0.1:{closed}")
    assert msg == f"compute cluster at tcp://127.0.0.1:{closed} is not reachable (OSError)" or \
        msg.startswith(f"compute cluster at tcp://127.0.0.1:{closed} is not reachable")
    assert "compute must be" in _start_refused(fed, compute="127.0.0.1:8786")
    assert "HE secret keys never leave" in _start_refused(fed, compute_trusted=True,
                                                          compute_secrets=["he_secret_keys"])
    assert "needs compute_trusted = true" in _start_refused(fed, compute_secrets=["psi_scalars"])
    assert "unencrypted" in _start_refused(fed, compute="tcp://10.1.2.3:8786", compute_trusted=True)
    assert "compute_trusted must be true or false" in _start_refused(fed, compute_trusted="yes")


def test_node_toml_reads_compute_settings(tmp_path):
    from pc_common.config import NodeConfig
    base = ('node_id = "n"\ncoordinator = "127.0.0.1:1"\ndata_dir = "d"\n'
            '[tls]\ncert = "c"\nkey = "k"\nca = "a"\nsm2_key = "s"\nx25519_key = "x"\n')
    (tmp_path / "old.toml").write_text(base)
    old = NodeConfig.load(tmp_path / "old.toml")                  # configs without compute keys stay valid
    assert (old.compute, old.compute_trusted, old.compute_secrets, old.compute_tls) == ("local", False, None, None)
    (tmp_path / "new.toml").write_text('compute = "tls://10.0.0.5:8786"\ncompute_trusted = true\n'
                                       'compute_secrets = ["psi_scalars"]\n' + base +
                                       '[compute_tls]\nca = "cca.pem"\ncert = "cc.pem"\nkey = "cc.key"\n')
    new = NodeConfig.load(tmp_path / "new.toml")
    assert new.compute == "tls://10.0.0.5:8786" and new.compute_trusted is True
    assert compute_mod.check_settings("n", new.compute, new.compute_trusted, new.compute_secrets) == \
        ("tls://10.0.0.5:8786", True, ("psi_scalars",))
    assert new.compute_tls == (tmp_path / "cca.pem", tmp_path / "cc.pem", tmp_path / "cc.key")


def _psi(ids_a, ids_b, compute) -> list[str]:
    from pc_node.psi import intersect
    return intersect(ids_a, ids_b, chunk_size=64, backend=compute.psi_backend()).intersection


def test_tls_cluster_gives_identical_results(tmp_path, monkeypatch):
    """A ``tls://`` scheduler and workers (certificates from the project's CA), reached through
    ``Compute.from_config`` with ``[compute_tls]``: the same PSI as local, with several calls of
    each session in flight; a client without the certificates gets no answer."""
    from pc_common.certs import CertificateAuthority
    from pc_common.identity import Identity
    from distributed.security import Security
    from pc_node.psi import ProviderSession
    ca = CertificateAuthority(tmp_path / "ca")
    ca.create()
    cluster_files = ca.issue(Identity("node", "compute_cluster"), tmp_path / "ca" / "cluster")
    node_files = ca.issue(Identity("node", "node_client"), tmp_path / "ca" / "node")
    tls = ["--tls-ca-file", str(ca.ca_pem), "--tls-cert", str(cluster_files.cert),
           "--tls-key", str(cluster_files.key)]
    config = dataclasses.make_dataclass("Cfg", ["compute", "compute_trusted", "compute_secrets", "compute_tls"])
    monkeypatch.setattr(compute_mod, "PSI_MIN_POINTS", 1)
    monkeypatch.setattr(compute_mod, "PSI_TASK_POINTS", 16)
    monkeypatch.setattr(compute_mod, "PSI_IN_FLIGHT", 3)
    ids_a = POOL[:200]
    ids_b = POOL[150:] + [f"x{i}" for i in range(100)]
    local = _psi(ids_a, ids_b, compute_mod.Compute.local())
    assert sorted(local) == sorted(set(ids_a) & set(ids_b)) and len(local) == 50
    (tmp_path / "dask").mkdir()
    with _dask_cluster(tmp_path / "dask", tls, security=Security(
            tls_ca_file=str(ca.ca_pem), tls_client_cert=str(node_files.cert), tls_client_key=str(node_files.key),
            require_encryption=True)) as (address, _client):
        assert address.startswith("tls://127.0.0.1:")
        compute = compute_mod.Compute.from_config(config(address, True, ["psi_scalars"],
                                                         (ca.ca_pem, node_files.cert, node_files.key)))
        try:
            assert _psi(ids_a, ids_b, compute) == local
            assert compute.submitted["psi_scalarmult"] >= 4 * (200 // 64)
            # Several calls of one session wait on the workers at once; the oldest is fetched
            # when one more would exceed PSI_IN_FLIGHT; results stay in order.
            prov = ProviderSession(ids_b, backend=compute.psi_backend())
            pts = prov.backend.hash_to_points(ids_a, b"d")
            key = prov.backend.random_scalar()
            laters = [prov.backend.scalarmult_later(key, pts[lo:lo + 40]) for lo in range(0, 200, 40)]
            assert sum(not later.done for later in laters) <= 3
            want = compute_mod.best_backend().scalarmult_batch(key, pts)
            assert (np.concatenate([later() for later in laters]) == want).all()
        finally:
            compute.close()
        monkeypatch.setattr(compute_mod, "CONNECT_TIMEOUT_S", 2)
        with pytest.raises(FailedPrecondition, match="not reachable"):   # plain TCP to a TLS scheduler
            compute_mod.Compute.connect(address.replace("tls://", "tcp://"))
