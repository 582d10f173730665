"""Shared fixtures for the integration tests: one small synthetic city per session and one
in-process federation (coordinator + a node per agency, mutual TLS on loopback) with the
city imported and the sandbox's policies written.

The helpers below are plain functions so the security tests can build federations of
their own (they change policies, quotas and suspensions and must not disturb these).
"""
from __future__ import annotations

import csv
import pathlib

import pytest

from tests.fedkit import LocalFederation, sandbox_policy_for_rules

CITY_HOUSEHOLDS = 120
CITY_SEED = 5
REQUESTER = "civil_affairs"


def make_city(root: pathlib.Path, households: int = CITY_HOUSEHOLDS, seed: int = CITY_SEED):
    """Generate a synthetic city into ``root``; returns its CitySummary."""
    from pc_devkit.synth_city import generate_city
    return generate_city(root, households=households, seed=seed)


def city_agencies(city: pathlib.Path) -> list[str]:
    return sorted(p.name for p in city.iterdir() if p.is_dir() and p.name != "rules")


def start_federation(root: pathlib.Path, city: pathlib.Path, agencies: list[str] | None = None) -> LocalFederation:
    """A started federation with ``city`` imported and the rules' grants written."""
    fed = LocalFederation(root, agencies or city_agencies(city))
    fed.start()
    try:
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


@pytest.fixture(scope="session")
def city(tmp_path_factory):
    """(city folder, CitySummary) of a ~120-household city, generated once per session."""
    root = tmp_path_factory.mktemp("city") / "city"
    summary = make_city(root)
    return root, summary


@pytest.fixture(scope="session")
def fed(city, tmp_path_factory):
    """A running federation with the city imported; stopped at the end of the session."""
    root = tmp_path_factory.mktemp("fed")
    federation = start_federation(root, city[0])
    yield federation
    federation.stop()
