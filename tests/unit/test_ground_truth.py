"""The plaintext oracle on a hand-built city with every boundary case, and on the synth city."""
from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest

from pc_node import idnum
from pc_common.errors import InvalidInput
from pc_devkit.ground_truth import evaluate, normalise_id
from pc_rules.rules import load_rule, parse_rule
from pc_devkit.synth_city import generate_city, metadata_toml

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
DIBAO = load_rule(RULES_DIR / "dibao.toml")


def _id(n: int, male: bool = True) -> str:
    return idnum.make_id("440305", dt.date(1960, 1, 1) + dt.timedelta(days=400 * n), 2 * n + (1 if male else 2))


def _id_with_x() -> str:
    for seq in range(1, 1000):
        i = idnum.make_id("110101", dt.date(1980, 5, 17), seq)
        if i.endswith("X"):
            return i
    raise AssertionError


# Households (dibao line 1100.00 per member):
#   H1 (2): wage 1200.00 + pension 1000.00 = 2200.00, exactly on the line -> fails income
#   H2 (2): only a motorcycle, one home, wage 2199.99 -> eligible (just below the line)
#   H3 (2): one person with three wage records 900 + 800 + 600 = 2300 -> fails income
#   H4 (1): car recorded with a lowercase x -> fails no_car
#   H5 (2): two homes, the second under " id " with spaces -> fails at_most_one_home
#   H6 (1): one home and one shop; truck -> fails no_car only
#   H7 (3): nothing on record at all -> eligible
A1, A2, B1, B2, C1, C2, D1, E1, E2, F1, G1, G2, G3 = (
    _id(1), _id(2, False), _id(3), _id(4, False), _id(5), _id(6, False), _id_with_x(),
    _id(8), _id(9, False), _id(10), _id(11), _id(12, False), _id(13))
SUBJECTS = [
    (A1, "H1"), (A2, "H1"), (B1, "H2"), (B2, "H2"), (C1, "H3"), (C2, "H3"), (D1, "H4"),
    (E1, "H5"), (E2, "H5"), (F1, "H6"), (G1, "H7"), (G2, "H7"), (G3, "H7"),
]
OTHER = _id(20)   # not an applicant; owns lots


def _write(path: Path, header: str, rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture()
def tiny_city(tmp_path):
    _write(tmp_path / "civil_affairs" / "applicants.csv", "id_number,household_id,name,district",
           [(i, h, "张三", "南山区") for i, h in SUBJECTS])
    _write(tmp_path / "public_security" / "vehicles.csv", "id_number,plate,vehicle_type,registered_on", [
        (B2, "粤B12345", "motorcycle", "2019-01-01"),
        (D1[:17] + "x", "粤B22222", "car", "2010-01-01"),
        (F1, "粤B33333", "truck", "2020-01-01"),
        (OTHER, "粤B44444", "car", "2020-01-01"),
    ])
    _write(tmp_path / "housing" / "properties.csv", "id_number,property_id,usage,area_m2,district", [
        (B1, "P1", "residential", "80.00", "南山区"),
        (E1, "P2", "residential", "70.00", "南山区"),
        (f"  {E2.lower()} ", "P3", "residential", "60.00", "福田区"),
        (F1, "P4", "residential", "50.00", "南山区"),
        (F1, "P5", "commercial", "30.00", "南山区"),
        (OTHER, "P6", "residential", "90.00", "南山区"),
        (OTHER, "P7", "residential", "90.00", "南山区"),
    ])
    _write(tmp_path / "hrss" / "pensions.csv", "id_number,monthly_amount", [
        (A2, "1000.00"),
        (OTHER, "9000.00"),
    ])
    _write(tmp_path / "tax" / "wages.csv", "id_number,employer,monthly_income", [
        (A1, "甲公司", "1200.00"),
        (f" {B1}", "乙公司", "2199.99"),
        (C1, "甲公司", "900.00"),
        (C1, "乙公司", "800.00"),
        (C1.lower() + " ", "丙公司", "600.00"),
        (OTHER, "甲公司", "50000.00"),
    ])
    _write(tmp_path / "market_regulation" / "businesses.csv", "id_number,business_id,business_name,status", [
        (G1, "92440300MA5F00000X", "南山区王记便利店", "revoked"),
        (F1, "92440300MA5F00001Y", "南山区李记餐馆", "active"),
    ])
    for ds in ["civil_affairs.applicants", "public_security.vehicles", "housing.properties",
               "hrss.pensions", "tax.wages", "market_regulation.businesses"]:
        agency, name = ds.split(".")
        (tmp_path / agency / f"{name}.toml").write_text(metadata_toml(ds), encoding="utf-8")
    return tmp_path


def _by_group(rows, column="household_id"):
    return {r[column]: r for r in rows}


def test_dibao_boundary_cases(tiny_city):
    rows = evaluate(DIBAO, tiny_city, tiny_city / "civil_affairs" / "applicants.csv")
    assert [r["id_number"] for r in rows] == [i for i, _ in SUBJECTS]     # input order
    got = {h: (r["eligible"], r["failed"]) for h, r in _by_group(rows).items()}
    assert got == {
        "H1": (False, ["income_below_line"]),        # exactly on the line fails
        "H2": (True, []),                            # motorcycle only passes no_car; 2199.99 < 2200
        "H3": (False, ["income_below_line"]),        # several wage records add up
        "H4": (False, ["no_car"]),                   # lowercase x matches
        "H5": (False, ["at_most_one_home"]),         # spaces + lowercase match
        "H6": (False, ["no_car"]),                   # truck counts; shop is not residential
        "H7": (True, []),
    }
    # Every member of a household gets the household's verdict.
    for r in rows:
        assert r["eligible"] == got[r["household_id"]][0]


def test_without_group_each_subject_alone(tiny_city):
    rule = parse_rule("""
id = "solo"
purpose = "social_assistance.eligibility"
requester = "civil_affairs"
subject_column = "id_number"
reveal = "reasons"

[[criteria]]
name = "has_pension"
type = "exists"
source = "hrss.pensions"

[[criteria]]
name = "few_wage_records"
type = "count_at_most"
source = "tax.wages"
where = "monthly_income >= 700"
max = 1

[[criteria]]
name = "no_active_business"
type = "none_exists"
source = "market_regulation.businesses"
where = "status = 'active'"

[[criteria]]
name = "small_pension"
type = "sum_below"
source = "hrss.pensions.monthly_amount"
limit = 1000.01
""", "solo.toml")
    rows = evaluate(rule, tiny_city, tiny_city / "civil_affairs" / "applicants.csv")
    by_id = {r["id_number"]: r for r in rows}
    assert "household_id" not in rows[0]
    assert by_id[A2]["failed"] == [] and by_id[A2]["eligible"]
    assert by_id[A1]["failed"] == ["has_pension"]
    assert by_id[C1]["failed"] == ["has_pension", "few_wage_records"]   # 900 and 800 are >= 700
    assert by_id[F1]["failed"] == ["has_pension", "no_active_business"]
    assert by_id[G1]["failed"] == ["has_pension"]                      # revoked business is fine


def test_limit_is_strict(tiny_city):
    text = (RULES_DIR / "dibao.toml").read_text(encoding="utf-8").replace("per_member = 1100.00", "limit = 2200.00")
    rows = evaluate(parse_rule(text, "d.toml"), tiny_city, tiny_city / "civil_affairs" / "applicants.csv")
    got = _by_group(rows)
    assert got["H1"]["failed"] == ["income_below_line"]    # 2200.00 is not below 2200.00
    assert got["H2"]["eligible"]                           # 2199.99 is


def test_subjects_file_with_spaces_and_duplicates_in_order(tiny_city, tmp_path):
    subjects = tmp_path / "subjects.csv"
    _write(subjects, "id_number,household_id", [(f" {D1.lower()} ", "X1"), (G1, "X2"), (G1, "X2")])
    rows = evaluate(DIBAO, tiny_city, subjects)
    assert [r["id_number"] for r in rows] == [f" {D1.lower()} ", G1, G1]
    assert [r["eligible"] for r in rows] == [False, True, True]


def test_missing_subject_column(tiny_city, tmp_path):
    subjects = tmp_path / "s.csv"
    _write(subjects, "person,household_id", [(A1, "H1")])
    with pytest.raises(InvalidInput, match="no column 'id_number'"):
        evaluate(DIBAO, tiny_city, subjects)


def test_normalise_id():
    assert normalise_id(" 11010119800517001x ") == "11010119800517001X"
    assert normalise_id("１１０１０１") == "110101"
    assert normalise_id("1101 01\u3000") == "110101"


def test_synth_city_edge_cases_and_eligibility_share(tmp_path):
    summary = generate_city(tmp_path, households=2000, seed=3)
    rows = evaluate(DIBAO, tmp_path, tmp_path / "civil_affairs" / "applicants.csv")
    by_hh = _by_group(rows)
    assert len(by_hh) == 2000
    for name, case in summary.edge_cases.items():
        got = by_hh[case["household_id"]]
        assert (got["eligible"], got["failed"]) == (case["eligible"], case["failed"]), name
    share = sum(r["eligible"] for r in by_hh.values()) / len(by_hh)
    assert 0.20 <= share <= 0.40
    # Every criterion fails for some households and passes for others.
    failures = Counter(name for r in by_hh.values() for name in r["failed"])
    assert set(failures) == {"no_car", "at_most_one_home", "income_below_line"}
