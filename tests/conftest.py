"""Fixtures and helpers shared by the integration and security tests.

Tests that need servers get real ones: a coordinator and one node per agency in-process, on
loopback port 0 with mutual TLS (``tests.fedkit.LocalFederation``), with a small synthetic city
imported where the test needs data and the sandbox's grants for the city's rules written.

* ``small_city(households, seed)`` — a synthetic city, generated once per session per
  (households, seed); treat it as read-only.
* ``new_federation(name, agencies, city=None)`` — a started federation of this module, stopped
  when the module ends (modules that change policies, quotas or suspensions build their own).
* ``fed`` — the federation a module runs against (the integration package's shared one, or a
  module's own where it overrides ``fed``); ``analyst`` — a client of the requester's analyst on it.
* ``postgres`` — a throw-away PostgreSQL cluster (``tests.pg_kit.PgCluster``: initdb + pg_ctl on
  a Unix socket in a temporary directory), started once per session; skipped only when
  PostgreSQL's ``pg_ctl`` is not installed.
* ``as_coordinator(fed, agency)`` — a Step stub to a node under the coordinator's own
  certificate, to play a deviating or forging coordinator.
"""
from __future__ import annotations

import csv
import pathlib
from typing import TYPE_CHECKING

import pytest

from pc_common import certs, tls
from pc_common.pb import node_pb2_grpc

if TYPE_CHECKING:
    from tests.fedkit import LocalFederation

REQUESTER = "civil_affairs"


# ----- helpers -------------------------------------------------------------------------------------------
def make_city(root: pathlib.Path, households: int, seed: int):
    """Generate a synthetic city into ``root``; returns its CitySummary."""
    from pc_devkit.synth_city import generate_city
    return generate_city(root, households=households, seed=seed)


def city_agencies(city: pathlib.Path) -> list[str]:
    return sorted(p.name for p in city.iterdir() if p.is_dir() and p.name != "rules")


def start_federation(root: pathlib.Path, city: pathlib.Path | None = None,
                     agencies: list[str] | None = None) -> LocalFederation:
    """A started federation; with ``city``, the city is imported and its rules' grants written."""
    from tests.fedkit import LocalFederation, sandbox_policy_for_rules     # servers: only when needed
    if agencies is None:
        if city is None:
            raise ValueError("name the agencies of a federation without a city")
        agencies = city_agencies(city)
    fed = LocalFederation(root, agencies)
    fed.start()
    try:
        if city is not None:
            fed.copy_city(city)
            sandbox_policy_for_rules(city, fed)
    except BaseException:
        fed.stop()
        raise
    return fed


def subset_subjects(src: pathlib.Path, dst: pathlib.Path, households: int) -> list[dict]:
    """Write the rows of the first ``households`` households of an applicants file."""
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        rows, seen = [], []
        for r in reader:
            if r["household_id"] not in seen:
                if len(seen) == households:
                    continue
                seen.append(r["household_id"])
            rows.append(r)
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return rows


def read_csv(path: pathlib.Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list[str]]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def norm(value: str) -> str:
    """An identifier as nodes normalise it: blanks removed, upper case."""
    return "".join(value.split()).upper()


def node_address(fed: LocalFederation, agency: str) -> str:
    return f"127.0.0.1:{fed.nodes[agency][2]}"


def coordinator_address(fed: LocalFederation) -> str:
    return f"127.0.0.1:{fed.coordinator_port}"


# ----- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def small_city(tmp_path_factory):
    """``small_city(households, seed) -> (folder, CitySummary)``, each generated once per session."""
    made: dict[tuple[int, int], tuple[pathlib.Path, object]] = {}

    def get(households: int, seed: int):
        if (households, seed) not in made:
            folder = tmp_path_factory.mktemp(f"city{households}_{seed}") / "city"
            made[(households, seed)] = folder, make_city(folder, households, seed)
        return made[(households, seed)]
    return get


@pytest.fixture(scope="session")
def postgres():
    """A running throw-away PostgreSQL cluster (``tests.pg_kit.PgCluster``), removed at the end."""
    from tests.pg_kit import PgCluster, find
    if find("pg_ctl") is None or find("initdb") is None:
        pytest.skip("PostgreSQL is not installed (no pg_ctl/initdb on PATH or in /usr/lib/postgresql/*/bin); "
                    ".ci/run installs Debian's postgresql package")
    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def new_federation(tmp_path_factory):
    """``new_federation(name, agencies=None, city=None) -> LocalFederation`` rooted at a fresh
    ``<tmp>/<name>/fed``; every federation started is stopped when the module ends."""
    started: list[LocalFederation] = []

    def start(name: str, agencies: list[str] | None = None, city: pathlib.Path | None = None):
        fed = start_federation(tmp_path_factory.mktemp(name) / "fed", city, agencies)
        started.append(fed)
        return fed
    yield start
    for fed in reversed(started):
        fed.stop()


@pytest.fixture
def analyst(fed):
    """A client of the requester's analyst (``analyst@civil_affairs``) on the module's ``fed``."""
    with fed.client(f"analyst@{REQUESTER}") as c:
        yield c


@pytest.fixture
def as_coordinator():
    """``as_coordinator(fed, agency) -> NodeStub`` under the coordinator's own certificate."""
    channels = []

    def stub(fed: LocalFederation, agency: str) -> node_pb2_grpc.NodeStub:
        ch = tls.secure_channel(node_address(fed, agency), certs.coordinator_files(fed.certs), agency)
        channels.append(ch)
        return node_pb2_grpc.NodeStub(ch)
    yield stub
    for ch in channels:
        ch.close()
