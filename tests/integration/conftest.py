"""The integration package's shared federation: one small synthetic city per session and one
in-process federation (coordinator + a node per agency, mutual TLS on loopback) with the city
imported and the sandbox's policies written.

The helpers and the other shared fixtures (``small_city``, ``new_federation``, ``analyst``,
``as_coordinator``) live in tests/conftest.py; modules with a federation of their own override
``fed``.
"""
from __future__ import annotations

import pytest

from tests.conftest import start_federation

CITY_HOUSEHOLDS = 120
CITY_SEED = 5


@pytest.fixture(scope="session")
def city(small_city):
    """(city folder, CitySummary) of a ~120-household city, generated once per session."""
    return small_city(CITY_HOUSEHOLDS, CITY_SEED)


@pytest.fixture(scope="session")
def fed(city, tmp_path_factory):
    """A running federation with the city imported; stopped at the end of the session."""
    root = tmp_path_factory.mktemp("fed")
    federation = start_federation(root, city[0])
    yield federation
    federation.stop()
