"""pc_rules.pinning (the digest a provider's grant pins a rule with, the thresholds and comparisons
it bounds) and pc_rules.catalog.column_uses (a column's use is the highest any criterion needs)."""
from __future__ import annotations

import json
import pathlib
from decimal import Decimal

import pytest

from pc_common import gm
from pc_rules import pinning
from pc_rules.rules import column_uses, load_rule, parse_rule

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAD = ('id = "r"\ntitle = "t"\npurpose = "social_assistance.eligibility"\nrequester = "civil_affairs"\n'
        'subject_column = "id_number"\ngroup_column = "household_id"\n\n')
CAR = ('[[criteria]]\nname = "no_car"\ntype = "none_exists"\nsource = "public_security.vehicles"\n'
       'where = "vehicle_type != \'motorcycle\'"\n')
HOME = ('[[criteria]]\nname = "one_home"\ntype = "count_at_most"\nsource = "housing.properties"\n'
        'where = "usage = \'residential\'"\nmax = 1\n')
INCOME = ('[[criteria]]\nname = "income"\ntype = "sum_below"\n'
          'sources = ["hrss.pensions.monthly_amount", "tax.wages.monthly_income"]\nper_member = 1100.00\n')


def rule(*criteria: str, head: str = HEAD):
    return parse_rule(head + "\n".join(criteria))


# ----- the digest -------------------------------------------------------------------------------------------
def test_digest_is_sm3_of_canonical_json_of_the_criteria_touching_the_agency():
    r = rule(CAR, HOME, INCOME)
    canonical = pinning.canonical_criteria(r, "housing")
    assert r.criteria_digest("housing") == pinning.criteria_digest(r, "housing") == gm.sm3(canonical).hex()
    doc = json.loads(canonical)
    assert doc == {"v": 1, "rule": "r", "agency": "housing", "criteria": [
        {"name": "one_home", "type": "count_at_most", "source": "housing.properties",
         "where": "usage = 'residential'", "max": 1, "per_member_cents": None, "limit_cents": None}]}
    # A criterion summing several agencies' columns keeps every source, in each agency's digest.
    tax = json.loads(pinning.canonical_criteria(r, "tax"))["criteria"]
    assert tax == [{"name": "income", "type": "sum_below", "where": None, "max": None, "per_member_cents": 110000,
                    "limit_cents": None, "sources": ["hrss.pensions.monthly_amount", "tax.wages.monthly_income"]}]


def test_shipped_dibao_digest_is_stable():
    """Requesters, coordinators and providers of different releases must agree byte for byte:
    a change of the canonical form is a new DIGEST_VERSION, not a silent change."""
    r = load_rule(ROOT / "rules" / "dibao.toml")
    assert pinning.DIGEST_VERSION == 1
    assert r.criteria_digest("housing") == "6db900a0de0e49f39f0dbe445653f2384bde73a4fe9a926fa12c83a2e841a26c"


@pytest.mark.parametrize("old, new", [
    ("max = 1", "max = 2"),
    ("usage = 'residential'", "usage = 'commercial'"),
    ('name = "one_home"', 'name = "homes"'),
    ('type = "count_at_most"', 'type = "exists"'),
])
def test_digest_changes_with_thresholds_where_names_and_types(old, new):
    r = rule(CAR, HOME)
    changed = rule(CAR, HOME.replace(old, new).replace("max = 1\n", "") if "exists" in new else HOME.replace(old, new))
    assert changed.criteria_digest("housing") != r.criteria_digest("housing")
    assert changed.criteria_digest("public_security") == r.criteria_digest("public_security")


def test_digest_changes_with_sources_and_added_criteria_but_not_order_or_money_spelling():
    base = rule(CAR, INCOME)
    assert rule(INCOME, CAR).criteria_digest("hrss") == base.criteria_digest("hrss")
    assert rule(CAR, INCOME.replace("1100.00", "1100")).criteria_digest("hrss") == base.criteria_digest("hrss")
    assert rule(CAR, INCOME.replace("1100.00", "1100.01")).criteria_digest("hrss") != base.criteria_digest("hrss")
    # Dropping tax from the sum changes what hrss's values are compared with: hrss's digest changes.
    alone = INCOME.replace(', "tax.wages.monthly_income"', "")
    assert rule(CAR, alone).criteria_digest("hrss") != base.criteria_digest("hrss")
    extra = '[[criteria]]\nname = "has_pension"\ntype = "exists"\nsource = "hrss.pensions"\n'
    assert rule(CAR, INCOME, extra).criteria_digest("hrss") != base.criteria_digest("hrss")
    # The rule id is part of it: a pin names one rule.
    assert rule(CAR, INCOME, head=HEAD.replace('id = "r"', 'id = "s"')).criteria_digest("hrss") != \
        base.criteria_digest("hrss")


# ----- thresholds and comparisons -----------------------------------------------------------------------------
def test_thresholds_and_compared_columns():
    where_income = INCOME.replace("per_member = 1100.00", 'limit = 5000\nwhere = "monthly_amount >= 0"')
    r = rule(CAR, HOME, where_income)
    got = pinning.thresholds(r, "hrss", "pensions")
    assert got == [pinning.Threshold("income", "limit", ("monthly_amount", "sum_below"), Decimal(5000)),
                   pinning.Threshold("income", "where", ("monthly_amount",), 0)]
    assert pinning.thresholds(r, "housing", "properties") == [
        pinning.Threshold("one_home", "max", ("count_at_most",), 1)]     # '=' is no threshold
    assert pinning.thresholds(r, "public_security", "vehicles") == []
    assert pinning.compared_columns(r, "housing", "properties", "id_number") == \
        [("one_home", "id_number"), ("one_home", "usage")]
    assert pinning.compared_columns(r, "hrss", "pensions", "id_number") == [("income", "monthly_amount")]
    assert [c.name for c in pinning.criteria_touching(r, "tax")] == ["income"]
    assert pinning.criteria_touching(r, "tax", "other") == []


# ----- column uses by highest rank --------------------------------------------------------------------------
def test_a_summed_column_needs_aggregate_whatever_its_where_says():
    trick = INCOME.replace("per_member = 1100.00", 'limit = 5000\nwhere = "monthly_amount >= 0"')
    assert column_uses(rule(trick), "hrss") == {"pensions": {"monthly_amount": "aggregate"}}


def test_a_column_gets_the_highest_use_of_any_criterion():
    summed = '[[criteria]]\nname = "s"\ntype = "sum_below"\nsource = "tax.wages.monthly_income"\nlimit = 1\n'
    filtered = ('[[criteria]]\nname = "f"\ntype = "exists"\nsource = "tax.wages"\n'
                'where = "monthly_income > 100 and employer = \'x\'"\n')
    for order in ((summed, filtered), (filtered, summed)):
        assert column_uses(rule(*order), "tax") == {"wages": {"monthly_income": "aggregate", "employer": "predicate"}}
    assert column_uses(rule(filtered), "tax") == {"wages": {"monthly_income": "predicate", "employer": "predicate"}}
    assert column_uses(rule(CAR), "tax") == {}
    assert column_uses(rule(CAR), "public_security") == {"vehicles": {"vehicle_type": "predicate"}}
