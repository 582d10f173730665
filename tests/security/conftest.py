"""Fixtures of the security tests: the hostile-peer federation (a 15-household city, four
agencies, the rule files of tests.security.hostile_kit and three households of subjects) and the
grants each hostile test starts from."""
from __future__ import annotations

import pytest

from tests.conftest import subset_subjects
from tests.security.hostile_kit import AGENCIES, HOUSING_POLICY, PENSIONS_GRANT, RULES, VEHICLES_GRANT


@pytest.fixture(scope="module")
def env(tmp_path_factory, small_city, new_federation):
    """One federation per module that uses it (tests change policies, quotas and suspensions)."""
    city, _ = small_city(15, 11)
    fed = new_federation("hostile", AGENCIES, city)
    root = fed.root.parent
    rules = root / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / f"{name}.toml").write_text(text, encoding="utf-8")
    subjects = root / "subjects.csv"
    rows = subset_subjects(city / "civil_affairs" / "applicants.csv", subjects, 3)
    return {"fed": fed, "city": city, "rules": rules, "subjects": subjects, "rows": rows, "root": root}


@pytest.fixture
def base_policies(env):
    """The grants every hostile test starts from (a test may change them; the next one resets)."""
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="auto"))
    fed.write_policy("housing", HOUSING_POLICY)
    fed.write_policy("hrss", PENSIONS_GRANT.format(quota=""))
    yield
