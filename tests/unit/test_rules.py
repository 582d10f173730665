"""Rule files: shipped rules, the error for each kind of mistake, catalog checks, metadata."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from pc_common.errors import InvalidInput
from pc_rules.metadata import load_metadata, parse_metadata
from pc_rules.rules import (
    Criterion,
    Rule,
    load_rule,
    parse_rule,
    validate_against_catalog,
)
from pc_devkit.synth_city import DATASETS, catalog, metadata_toml
from pc_rules.where import parse_where

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
SHIPPED = sorted(RULES_DIR.glob("*.toml"))

DIBAO = (RULES_DIR / "dibao.toml").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------
# Shipped rules
# ---------------------------------------------------------------------------


def test_at_least_three_rules_shipped():
    assert {"dibao.toml", "tekun.toml", "linshi.toml"} <= {p.name for p in SHIPPED}
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_rule_parses_and_validates(path):
    rule = load_rule(path)
    assert rule.id == path.stem
    validate_against_catalog(rule, catalog())
    assert path.read_text(encoding="utf-8").lstrip().startswith("#"), "rules cite their policy in a comment"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_rule_round_trips_through_json(path):
    rule = load_rule(path)
    again = Rule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again == rule
    assert again.to_dict() == rule.to_dict()


def test_dibao_is_the_design_example():
    rule = load_rule(RULES_DIR / "dibao.toml")
    assert (rule.id, rule.requester, rule.subject_column, rule.group_column, rule.reveal) == (
        "dibao", "civil_affairs", "id_number", "household_id", "verdict")
    assert rule.purpose == "social_assistance.eligibility"
    no_car, homes, income = rule.criteria
    assert no_car == Criterion("no_car", "none_exists", source="public_security.vehicles",
                               where=parse_where("vehicle_type != 'motorcycle'"))
    assert homes.type == "count_at_most" and homes.max == 1 and homes.source == "housing.properties"
    assert homes.where == parse_where("usage = 'residential'")
    assert income.type == "sum_below"
    assert income.sources == ("hrss.pensions.monthly_amount", "tax.wages.monthly_income")
    assert income.per_member == Decimal("1100.00") and income.per_member_cents == 110_000
    assert income.limit is None and income.threshold_cents(3) == 330_000
    assert rule.providers() == ["housing", "hrss", "public_security", "tax"]
    assert rule.datasets() == {
        "public_security.vehicles": {"vehicle_type"},
        "housing.properties": {"usage"},
        "hrss.pensions": {"monthly_amount"},
        "tax.wages": {"monthly_income"},
    }


def catalog_entry(meta) -> dict:
    """What the node publishes for a dataset, as rule validation reads it (``catalog_view``)."""
    return {"key_column": meta.key_column, "columns": {c.name: c.type for c in meta.all_columns()}}


def catalog_of_city(root: Path) -> dict:
    """The catalog a federation importing ``root/<agency>/<dataset>.csv`` publishes, from the metadata."""
    return {f"{p.parent.name}.{p.stem}": catalog_entry(load_metadata(p))
            for p in sorted(root.glob("*/*.toml")) if p.with_suffix(".csv").exists()}


def test_catalog_of_generated_city_matches(tmp_path):
    from pc_devkit.synth_city import generate_city

    generate_city(tmp_path, households=30, seed=5)
    assert catalog_of_city(tmp_path) == catalog()
    for path in SHIPPED:
        validate_against_catalog(load_rule(tmp_path / "rules" / path.name), catalog_of_city(tmp_path))


# ---------------------------------------------------------------------------
# Accepted variations
# ---------------------------------------------------------------------------

MINIMAL = """
id = "r1"
purpose = "social_assistance.eligibility"
requester = "civil_affairs"
subject_column = "id_number"
"""


def test_minimal_rule_defaults():
    rule = parse_rule(MINIMAL + '[[criteria]]\nname = "has_pension"\ntype = "exists"\nsource = "hrss.pensions"\n', "r1.toml")
    assert rule.reveal == "verdict" and rule.group_column is None and rule.title == "r1"
    assert rule.criteria[0].where is None
    assert rule.providers() == ["hrss"]


def test_sum_below_single_source_and_limit_forms():
    base = MINIMAL + '[[criteria]]\nname = "low"\ntype = "sum_below"\nsource = "hrss.pensions.monthly_amount"\n'
    for text, expected in [("limit = 2000", "2000.00"), ('limit = "1999.5"', "1999.50"),
                           ("limit = 0.01", "0.01"), ("limit = 1100.00", "1100.00")]:
        c = parse_rule(base + text, "r.toml").criteria[0]
        assert c.sources == ("hrss.pensions.monthly_amount",)
        assert str(c.limit) == expected and c.per_member is None
        assert c.limit_cents == int(Decimal(expected) * 100)
        assert c.threshold_cents(7) == c.limit_cents


def test_sum_below_where_filters_summed_rows():
    text = MINIMAL + ('[[criteria]]\nname = "low"\ntype = "sum_below"\n'
                      'sources = ["tax.wages.monthly_income"]\nwhere = "employer != \'x\'"\nper_member = 10\n')
    c = parse_rule(text, "r.toml").criteria[0]
    assert c.where == parse_where("employer != 'x'")
    assert c.datasets() == {"tax.wages": {"employer", "monthly_income"}}


# ---------------------------------------------------------------------------
# Every kind of error names the file, the criterion and the field
# ---------------------------------------------------------------------------


def _edit(old: str, new: str) -> str:
    assert old in DIBAO
    return DIBAO.replace(old, new, 1)


ERRORS = [
    ("unknown type",
     _edit('type = "none_exists"', 'type = "none_exist"'),
     "dibao.toml: criterion 'no_car': field 'type': unknown type 'none_exist' (expected one of none_exists, exists, count_at_most, sum_below)"),
    ("unknown rule key",
     _edit('reveal = "verdict"', 'reveal = "verdict"\ncolour = "red"'),
     "dibao.toml: field 'colour': unknown key"),
    ("unknown criterion key",
     _edit("max = 1", "max = 1\nminimum = 0"),
     "dibao.toml: criterion 'at_most_one_home': field 'minimum': unknown key"),
    ("duplicate name",
     _edit('name = "at_most_one_home"', 'name = "no_car"'),
     "dibao.toml: criterion 'no_car': field 'name': duplicate criterion name"),
    ("missing max",
     _edit("max = 1", ""),
     "dibao.toml: criterion 'at_most_one_home': field 'max': missing"),
    ("negative max",
     _edit("max = 1", "max = -1"),
     "criterion 'at_most_one_home': field 'max': must be between 0"),
    ("float max",
     _edit("max = 1", "max = 1.5"),
     "criterion 'at_most_one_home': field 'max': must be an integer, not a float"),
    ("bool max",
     _edit("max = 1", "max = true"),
     "criterion 'at_most_one_home': field 'max': must be an integer, not a boolean"),
    ("max on none_exists",
     _edit('where = "vehicle_type', 'max = 2\nwhere = "vehicle_type'),
     "criterion 'no_car': field 'max': not allowed for type 'none_exists'"),
    ("per_member and limit",
     _edit("per_member = 1100.00", "per_member = 1100.00\nlimit = 5000"),
     "criterion 'income_below_line': field 'per_member': give exactly one of 'per_member' and 'limit'"),
    ("neither per_member nor limit",
     _edit("per_member = 1100.00", ""),
     "criterion 'income_below_line': field 'per_member': give exactly one"),
    ("three decimal places",
     _edit("per_member = 1100.00", "per_member = 1100.005"),
     "criterion 'income_below_line': field 'per_member': at most two decimal places"),
    ("negative money",
     _edit("per_member = 1100.00", "per_member = -1"),
     "criterion 'income_below_line': field 'per_member': must not be negative"),
    ("money as text",
     _edit("per_member = 1100.00", 'per_member = "lots"'),
     "criterion 'income_below_line': field 'per_member': must be a decimal number"),
    ("sources on count type",
     _edit('source = "housing.properties"', 'sources = ["housing.properties"]'),
     "criterion 'at_most_one_home': field 'sources': not allowed for type 'count_at_most'"),
    ("source missing",
     _edit('source = "housing.properties"', ""),
     "criterion 'at_most_one_home': field 'source': missing"),
    ("source shape",
     _edit('source = "housing.properties"', 'source = "housing"'),
     "criterion 'at_most_one_home': field 'source': must have the form \"agency.dataset\""),
    ("sum source shape",
     _edit('"tax.wages.monthly_income"]', '"tax.wages"]'),
     "criterion 'income_below_line': field 'sources': must have the form \"agency.dataset.column\""),
    ("sum source duplicate",
     _edit('"tax.wages.monthly_income"]', '"hrss.pensions.monthly_amount"]'),
     "criterion 'income_below_line': field 'sources': lists the same column twice"),
    ("sum both source forms",
     _edit("per_member = 1100.00", 'per_member = 1100.00\nsource = "tax.wages.monthly_income"'),
     "criterion 'income_below_line': field 'sources': give either 'source' or 'sources'"),
    ("sum sources empty",
     _edit('sources = ["hrss.pensions.monthly_amount", "tax.wages.monthly_income"]', "sources = []"),
     "criterion 'income_below_line': field 'sources': must be a non-empty array"),
    ("where syntax",
     _edit("usage = 'residential'", "usage = 'residential'; drop table x"),
     "dibao.toml: criterion 'at_most_one_home': field 'where': position 22: unexpected ';'"),
    ("where injection",
     _edit("vehicle_type != 'motorcycle'", "vehicle_type != 'motorcycle' or 1=1 --"),
     "criterion 'no_car': field 'where': position 33: expected a column name"),
    ("where not string",
     _edit("where = \"usage = 'residential'\"", "where = 5"),
     "criterion 'at_most_one_home': field 'where': must be a string, not an integer"),
    ("bad reveal",
     _edit('reveal = "verdict"', 'reveal = "everything"'),
     "dibao.toml: field 'reveal': unknown mode 'everything'"),
    ("bad column name",
     _edit('group_column = "household_id"', 'group_column = "household id"'),
     "dibao.toml: field 'group_column': invalid column name"),
    ("same group and subject",
     _edit('group_column = "household_id"', 'group_column = "id_number"'),
     "dibao.toml: field 'group_column': must differ from subject_column"),
    ("missing id",
     _edit('id = "dibao"', ""),
     "dibao.toml: field 'id': missing"),
    ("bad purpose",
     _edit('purpose = "social_assistance.eligibility"', 'purpose = "Anything Goes"'),
     "dibao.toml: field 'purpose': invalid purpose"),
    ("bad criterion name",
     _edit('name = "no_car"', 'name = "No Car!"'),
     "dibao.toml: criterion #1: field 'name': invalid criterion name"),
    ("missing criterion name",
     _edit('name = "at_most_one_home"\n', ""),
     "dibao.toml: criterion #2: field 'name': missing"),
    ("missing type",
     _edit('type = "sum_below"', ""),
     "dibao.toml: criterion 'income_below_line': field 'type': missing"),
    ("not toml",
     DIBAO + "\n[[criteria]\n",
     "dibao.toml: not valid TOML"),
]


@pytest.mark.parametrize("text, expected", [(t, e) for _, t, e in ERRORS], ids=[n for n, _, _ in ERRORS])
def test_error_names_file_criterion_and_field(text, expected):
    with pytest.raises(InvalidInput) as exc:
        parse_rule(text, "dibao.toml")
    msg = str(exc.value)
    assert expected in msg
    assert msg.startswith("dibao.toml: ")
    assert "\n" not in msg


def test_no_criteria():
    with pytest.raises(InvalidInput, match="r.toml: field 'criteria': missing"):
        parse_rule(MINIMAL, "r.toml")
    with pytest.raises(InvalidInput, match="r.toml: field 'criteria': must be a non-empty array"):
        parse_rule(MINIMAL + "criteria = []", "r.toml")


def test_load_rule_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text(_edit('type = "none_exists"', 'type = "nope"'), encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"^broken.toml: criterion 'no_car': field 'type'"):
        load_rule(p)
    with pytest.raises(InvalidInput, match="missing.toml: cannot read"):
        load_rule(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"id": "x"},
        {**json.loads(json.dumps(parse_rule(DIBAO, "d").to_dict())), "criteria": "all"},
        {**json.loads(json.dumps(parse_rule(DIBAO, "d").to_dict())), "extra": True},
    ],
)
def test_from_dict_validates(bad):
    with pytest.raises(InvalidInput, match="^job: "):
        Rule.from_dict(bad, "job")


def test_from_dict_rejects_injected_where():
    d = parse_rule(DIBAO, "d").to_dict()
    d["criteria"][0]["where"] = "vehicle_type = 'car'; DROP TABLE vehicles"
    with pytest.raises(InvalidInput, match="criterion 'no_car': field 'where'"):
        Rule.from_dict(d, "job")


# ---------------------------------------------------------------------------
# Catalog validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('source = "public_security.vehicles"', 'source = "traffic.vehicles"',
         "criterion 'no_car': field 'source': unknown agency 'traffic'"),
        ('source = "public_security.vehicles"', 'source = "public_security.boats"',
         "criterion 'no_car': field 'source': agency 'public_security' has no dataset 'boats'"),
        ("vehicle_type != 'motorcycle'", "colour != 'red'",
         "criterion 'no_car': field 'where': in public_security.vehicles: unknown column 'colour'"),
        ("vehicle_type != 'motorcycle'", "vehicle_type != 2",
         "criterion 'no_car': field 'where': in public_security.vehicles: column 'vehicle_type' is text but is compared with a number"),
        ("vehicle_type != 'motorcycle'", "registered_on > 2015",
         "field 'where': in public_security.vehicles: column 'registered_on' is a date"),
        ("usage = 'residential'", "area_m2 > '100'",
         "criterion 'at_most_one_home': field 'where': in housing.properties: column 'area_m2' is decimal"),
        ('"tax.wages.monthly_income"]', '"tax.wages.salary"]',
         "criterion 'income_below_line': field 'sources': dataset 'tax.wages' has no column 'salary'"),
        ('"tax.wages.monthly_income"]', '"tax.wages.employer"]',
         "criterion 'income_below_line': field 'sources': column 'tax.wages.employer' is text; only integer or decimal"),
        ('"tax.wages.monthly_income"]', '"tax.wages.id_number"]',
         "field 'sources': 'tax.wages.id_number' is the key column"),
        ("per_member = 1100.00", "per_member = 1100.00\nwhere = \"employer = 'x'\"",
         "criterion 'income_below_line': field 'where': in hrss.pensions: unknown column 'employer'"),
    ],
)
def test_catalog_errors(old, new, expected):
    rule = parse_rule(_edit(old, new), "dibao.toml")
    with pytest.raises(InvalidInput) as exc:
        validate_against_catalog(rule, catalog())
    assert expected in str(exc.value)
    assert str(exc.value).startswith("dibao.toml: ")


def test_catalog_error_without_file_name_names_rule():
    rule = Rule.from_dict({**parse_rule(DIBAO, "x").to_dict(), "id": "dibao"}, "")
    cat = {k: v for k, v in catalog().items() if k != "tax.wages"}
    with pytest.raises(InvalidInput, match=r"^rule 'dibao': criterion 'income_below_line': field 'sources': agency 'tax'|unknown agency 'tax'"):
        validate_against_catalog(rule, cat)


# ---------------------------------------------------------------------------
# Dataset metadata
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_generated_metadata_parses(dataset):
    meta = parse_metadata(metadata_toml(dataset), f"{dataset}.toml")
    assert meta.key_column == "id_number"
    assert catalog_entry(meta) == catalog()[dataset]
    assert all(1 <= c.sensitivity <= 4 for c in meta.all_columns())


META = """
description = "Vehicles"
[columns.id_number]
type = "text"
description = "owner"
sharing = "conditional"
sensitivity = 3
[columns.weight]
type = "decimal"
unit = "t"
"""


def test_metadata_defaults():
    meta = parse_metadata(META, "v.toml")
    w = {c.name: c for c in meta.all_columns()}["weight"]
    assert (w.type, w.sharing, w.sensitivity, w.unit, w.description) == ("decimal", "conditional", 3, "t", "")
    assert meta.key_meta.name == "id_number" and [c.name for c in meta.columns] == ["weight"]
    # What the importer infers is left open: no key column named, no type, no columns at all.
    bare = parse_metadata('[columns.weight]\nunit = "t"\n', "v.toml", default_key="owner")
    assert bare.key_column == "owner" and bare.key_meta is None and bare.columns[0].type == ""
    assert parse_metadata('key_column = "pid"\n', "v.toml").key_column == "pid"
    with pytest.raises(InvalidInput, match="v.toml: 'columns' must be tables"):
        parse_metadata("columns = 5\n", "v.toml")


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('description = "Vehicles"', 'description = "Vehicles"\nowner = "x"', "v.toml: unknown key 'owner'"),
        ('type = "decimal"', 'type = "float"', "column 'weight': type must be one of integer, decimal, text, date"),
        ("sensitivity = 3", "sensitivity = 5", "column 'id_number': sensitivity must be an integer from 1 to 4"),
        ('sharing = "conditional"', 'sharing = "public"', "column 'id_number': sharing must be one of open"),
        ('unit = "t"', 'unit = "t"\ncolour = 1', "column 'weight': unknown key 'colour'"),
        ('description = "Vehicles"', 'description = "Vehicles"\nkey_column = "bad-name"',
         "v.toml: key_column must be a column name"),
        ('description = "Vehicles"', 'description = 7', "v.toml: description must be a string"),
        ('unit = "t"', 'unit = 1', "column 'weight': unit must be a string"),
        ("sensitivity = 3", "sensitivity = true", "column 'id_number': sensitivity must be an integer"),
        ("[columns.weight]", "[columns.\"bad name\"]", "column 'bad name': invalid column name"),
    ],
)
def test_metadata_errors(old, new, expected):
    with pytest.raises(InvalidInput) as exc:
        parse_metadata(META.replace(old, new, 1), "v.toml")
    assert expected in str(exc.value)


def test_metadata_key_column_must_be_text():
    text = META.replace('description = "Vehicles"', 'description = "Vehicles"\nkey_column = "weight"')
    with pytest.raises(InvalidInput, match="must have type 'text'"):
        parse_metadata(text, "v.toml")
