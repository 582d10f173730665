"""The synthetic city: determinism, valid identifiers, plausible households, formats."""
from __future__ import annotations

import csv
import datetime as dt
import re
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from pc_node import idnum
from pc_rules.metadata import load_metadata
from pc_devkit.synth_city import DATASETS, REFERENCE_DATE, catalog, generate_city, id_check_char

REF = dt.date.fromisoformat(REFERENCE_DATE)
HOUSEHOLDS = 2000


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("city")
    summary = generate_city(out, households=HOUSEHOLDS, seed=7)
    return out, summary


def _rows(city_dir: Path, dataset: str) -> list[dict]:
    agency, name = dataset.split(".")
    with open(city_dir / agency / f"{name}.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    a = generate_city(tmp_path / "a", households=300, seed=11)
    b = generate_city(tmp_path / "b", households=300, seed=11)
    generate_city(tmp_path / "c", households=300, seed=12)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert a.rows == b.rows and a.edge_cases == b.edge_cases
    assert fa.keys() == fc.keys()
    assert fa["civil_affairs/applicants.csv"] != fc["civil_affairs/applicants.csv"]


def test_layout_and_metadata(city):
    out, summary = city
    for dataset in DATASETS:
        agency, name = dataset.split(".")
        assert (out / agency / f"{name}.csv").is_file()
        meta = load_metadata(out / agency / f"{name}.toml")
        with open(out / agency / f"{name}.csv", encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split(",")
        assert header == [c.name for c in meta.all_columns()], dataset
        assert all(c.type for c in meta.all_columns()), dataset   # every type declared, none left to infer
        assert summary.rows[dataset] == len(_rows(out, dataset))
    published = {f"{p.parent.name}.{p.stem}": {"key_column": m.key_column,
                                                "columns": {c.name: c.type for c in m.all_columns()}}
                 for p in sorted(out.glob("*/*.toml")) if p.with_suffix(".csv").exists()
                 for m in [load_metadata(p)]}
    assert published == catalog()
    assert {p.name for p in (out / "rules").glob("*.toml")} >= {"dibao.toml", "tekun.toml", "linshi.toml"}


def test_all_identity_numbers_valid_and_unique(city):
    out, summary = city
    applicants = _rows(out, "civil_affairs.applicants")
    ids = [r["id_number"] for r in applicants]
    assert len(ids) == summary.persons
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[1-8][0-9]{16}[0-9X]", i) for i in ids)  # applicants are clean
    assert all(idnum.is_valid_many(ids, today=REF))
    for dataset in DATASETS:
        key = [r["id_number"] for r in _rows(out, dataset)]
        _, reasons = idnum.validate_many(key, today=REF)
        assert reasons.count(None) == len(key), dataset
    # The vectorised check characters agree with the scalar reference.
    assert all(id_check_char(i[:17]) == i[17] for i in ids[:500])


def test_households_are_plausible(city):
    out, _ = city
    members = defaultdict(list)
    for r in _rows(out, "civil_affairs.applicants"):
        members[r["household_id"]].append(r)
    assert len(members) == HOUSEHOLDS
    sizes = Counter(len(m) for m in members.values())
    assert set(sizes) <= set(range(1, 7)) and len(sizes) == 6
    for hh, rows in members.items():
        births = [idnum.birth_date(r["id_number"]) for r in rows]
        ages = [(REF - b).days / 365.25 for b in births]
        assert max(ages) >= 18, hh                      # someone is an adult
        assert all(0 <= a < 101 for a in ages)
        assert len({r["district"] for r in rows}) == 1  # one residence per household
        assert all(2 <= len(r["name"]) <= 4 and re.fullmatch(r"[\u4e00-\u9fff]+", r["name"]) for r in rows)
    # Spouses of opposite sex are common: first two members differ in sex digit most of the time.
    pairs = [m for m in members.values() if len(m) >= 2]
    mixed = sum(idnum.is_male(m[0]["id_number"]) != idnum.is_male(m[1]["id_number"]) for m in pairs)
    assert mixed / len(pairs) > 0.7
    regions = Counter(r["id_number"][:6] for rows in members.values() for r in rows)
    assert regions.most_common(1)[0][0].startswith("4403")


def test_value_formats(city):
    out, _ = city
    assert {r["vehicle_type"] for r in _rows(out, "public_security.vehicles")} == {"car", "truck", "motorcycle"}
    for r in _rows(out, "public_security.vehicles"):
        d = dt.date.fromisoformat(r["registered_on"])
        assert dt.date(2000, 1, 1) <= d <= REF
        assert idnum.birth_date(r["id_number"]) + dt.timedelta(days=18 * 365) <= d
    props = _rows(out, "housing.properties")
    assert {r["usage"] for r in props} == {"residential", "commercial"}
    assert len({r["property_id"] for r in props}) == len(props)
    assert {r["status"] for r in _rows(out, "market_regulation.businesses")} == {"active", "revoked"}
    money = re.compile(r"[0-9]+\.[0-9]{2}")
    for dataset, col in [("hrss.pensions", "monthly_amount"), ("tax.wages", "monthly_income"),
                         ("housing.properties", "area_m2")]:
        values = [r[col] for r in _rows(out, dataset)]
        assert all(money.fullmatch(v) for v in values), dataset
        assert all(Decimal(v) > 0 for v in values)
    plates = [r["plate"] for r in _rows(out, "public_security.vehicles")]
    assert len(set(plates)) == len(plates)


def test_business_ids_have_valid_check_characters(city):
    out, _ = city
    alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    weights = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]
    codes = [r["business_id"] for r in _rows(out, "market_regulation.businesses")]
    assert codes and len(set(codes)) == len(codes)
    for code in codes:
        assert len(code) == 18 and set(code) <= set(alphabet)
        total = sum(alphabet.index(c) * w for c, w in zip(code, weights))
        assert alphabet[(31 - total % 31) % 31] == code[17]


def test_deliberate_edge_cases(city):
    out, summary = city
    assert set(summary.edge_cases) == {"motorcycle_only", "income_on_line", "several_wage_records",
                                       "lowercase_x_car", "spaced_id_second_home", "home_and_shop"}
    raw_ids = [r["id_number"] for d in DATASETS if d != "civil_affairs.applicants" for r in _rows(out, d)]
    assert any(i.strip().endswith("x") for i in raw_ids)
    assert any(i != i.strip() for i in raw_ids)
    wage_ids = Counter(r["id_number"].strip().upper() for r in _rows(out, "tax.wages"))
    assert sum(1 for n in wage_ids.values() if n >= 2) >= 10
    # Providers also know residents who never applied.
    applicants = {r["id_number"] for r in _rows(out, "civil_affairs.applicants")}
    vehicle_owners = {r["id_number"].strip().upper() for r in _rows(out, "public_security.vehicles")}
    assert vehicle_owners - applicants and vehicle_owners & applicants
    assert summary.residents > summary.persons


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        generate_city("/nonexistent-never-written", households=0)


def test_cli_help_and_run(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "gen_city.py"
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--households" in r.stdout and "--seed" in r.stdout
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "c"), "--households", "40", "--seed", "2"],
                       capture_output=True, text=True, check=True)
    assert "edge cases" in r.stdout
    assert (tmp_path / "c" / "tax" / "wages.csv").is_file()
