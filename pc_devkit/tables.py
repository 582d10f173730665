"""Per-agency table writers of the synthetic city: one function per dataset turns the drawn
records (person indices and values) into the agency's CSV, with identifiers spelled as real
exports spell them, plates, property titles, employer names and unified social credit codes,
and writes the ``<dataset>.toml`` metadata next to it.

Each writer draws from the generator it is given; ``generate_city`` calls them in a fixed
order so the same seed gives byte-identical files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pc_devkit.datasets import metadata_toml
from pc_devkit.people import (DISTRICTS, REF, SURNAMES, People, date_str, int_str, join, money_str, strings,
                              unique_codes)

BRAND_CHARS = "华创腾鑫恒达盛泰信诚宏远海天安金瑞丰永祥嘉兴汇联智新科源佳顺和美通"
INDUSTRIES = ("科技", "贸易", "物流", "餐饮管理", "建筑工程", "电子", "信息技术", "商贸", "物业管理",
              "家政服务", "制造", "医疗器械", "服装", "印刷", "装饰工程")
TRADES = ("便利店", "餐馆", "五金店", "水果店", "理发店", "快递服务部", "电器维修部", "服装店", "早餐店", "茶行")

PLATE_PREFIXES = ("粤B", "粤B", "粤B", "粤B", "粤B", "粤B", "粤B", "粤B", "粤S", "湘A", "赣B", "桂A")
PLATE_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"        # 34: no I, O
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"             # GB 32100 alphabet (31)
_USCC_W = np.array([1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28], dtype=np.int64)
_ORG_W = np.array([3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)  # GB 11714


def write(out: Path, dataset: str, columns: dict[str, pa.Array],
          order: Optional[np.ndarray] = None) -> int:
    agency, name = dataset.split(".")
    folder = out / agency
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    if order is not None:
        table = table.take(pa.array(order))
    path = folder / f"{name}.csv"
    with open(path, "wb") as f:
        f.write((",".join(table.column_names) + "\n").encode("utf-8"))
        if table.num_rows:
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    (folder / f"{name}.toml").write_text(metadata_toml(dataset), encoding="utf-8")
    return table.num_rows


# ---------------------------------------------------------------------------
# One writer per dataset
# ---------------------------------------------------------------------------

def write_applicants(out: Path, P: People, n_app: int, households: int, hh_district: np.ndarray) -> int:
    """civil_affairs.applicants: applicants are persons ``[0, n_app)``, households ``[0, households)``."""
    hh_ids = join("H", int_str(np.arange(1, households + 1), 7))
    applicants = {
        "id_number": pa.array(P.ids[:n_app]),
        "household_id": hh_ids.take(pa.array(P.hh[:n_app])),
        "name": P.names.slice(0, n_app),
        "district": strings(DISTRICTS, hh_district[P.hh[:n_app]]),
    }
    return write(out, "civil_affairs.applicants", applicants)


def write_vehicles(out: Path, rng: np.random.Generator, P: People, v_person: np.ndarray, v_type: np.ndarray,
                   spelled: list[tuple[int, str]], n_regular: int) -> int:
    """public_security.vehicles: plates, types and first registration dates."""
    order = rng.permutation(len(v_person))
    nv = len(v_person)
    # Plates: two letters-or-digits then three digits (粤B·A7123), or five
    # letters-or-digits when a very large city needs more numbers.
    radices = [34, 34, 10, 10, 10] if nv <= 34 * 34 * 1000 else [34] * 5
    rest_code = unique_codes(rng, nv, int(np.prod(radices)))
    chars = []
    for r in reversed(radices):
        chars.append(rest_code % r)
        rest_code //= r
    plate = join(strings(PLATE_PREFIXES, rng.integers(0, len(PLATE_PREFIXES), nv)),
                 *[strings(list(PLATE_CHARS), c) for c in reversed(chars)])
    adult_day = P.birth[v_person] + np.timedelta64(18 * 365 + 5, "D")
    first = np.maximum(adult_day, np.datetime64("2000-01-01"))
    span = np.maximum((REF - first).astype(np.int64), 1)
    reg = first + (rng.random(nv) * span).astype("timedelta64[D]")
    v_ids = provider_ids(rng, P, v_person, spelled, n_regular)
    vehicles = {
        "id_number": v_ids,
        "plate": plate,
        "vehicle_type": strings(("car", "truck", "motorcycle"), v_type),
        "registered_on": date_str(reg),
    }
    return write(out, "public_security.vehicles", vehicles, order)


def write_properties(out: Path, rng: np.random.Generator, P: People, pr_person: np.ndarray, pr_usage: np.ndarray,
                     pr_hh: np.ndarray, hh_class: np.ndarray, hh_district: np.ndarray,
                     spelled: list[tuple[int, str]], n_regular: int) -> int:
    """housing.properties: title numbers, usage, floor area and district."""
    npr = len(pr_person)
    order = rng.permutation(npr)
    title_no = unique_codes(rng, npr, 10**7)
    year = rng.integers(2000, 2025, npr)
    pid = join("粤(", int_str(year), ")深圳市不动产权第", int_str(title_no, 7), "号")
    area = np.where(pr_usage == 0,
                    np.exp(np.log(np.array([62.0, 88.0, 135.0])[hh_class[pr_hh]]) + 0.3 * rng.standard_normal(npr)),
                    np.exp(np.log(110.0) + 0.6 * rng.standard_normal(npr)))
    area_cents = np.clip((area * 100).astype(np.int64), 1500, 200_000_00)
    pr_district = np.where(rng.random(npr) < 0.8, hh_district[pr_hh], rng.integers(0, len(DISTRICTS), npr))
    properties = {
        "id_number": provider_ids(rng, P, pr_person, spelled, n_regular),
        "property_id": pid,
        "usage": strings(("residential", "commercial"), pr_usage),
        "area_m2": money_str(area_cents),
        "district": strings(DISTRICTS, pr_district),
    }
    return write(out, "housing.properties", properties, order)


def write_pensions(out: Path, rng: np.random.Generator, P: People, p_person: np.ndarray,
                   p_amount: np.ndarray) -> int:
    """hrss.pensions: one monthly amount per pensioner."""
    order = rng.permutation(len(p_person))
    pensions = {
        "id_number": provider_ids(rng, P, p_person, [], len(p_person)),
        "monthly_amount": money_str(p_amount),
    }
    return write(out, "hrss.pensions", pensions, order)


def write_wages(out: Path, rng: np.random.Generator, P: People, w_person: np.ndarray, w_amount: np.ndarray,
                w_employer: np.ndarray, employers: pa.Array) -> int:
    """tax.wages: one row per person and employer."""
    order = rng.permutation(len(w_person))
    wages = {
        "id_number": provider_ids(rng, P, w_person, [], len(w_person)),
        "employer": employers.take(pa.array(w_employer)),
        "monthly_income": money_str(w_amount),
    }
    return write(out, "tax.wages", wages, order)


def write_businesses(out: Path, rng: np.random.Generator, P: People, b_person: np.ndarray, b_status: np.ndarray,
                     hh_district: np.ndarray, hh_surname: np.ndarray) -> int:
    """market_regulation.businesses: sole proprietorships and companies by representative."""
    order = rng.permutation(len(b_person))
    return write(out, "market_regulation.businesses",
                 _businesses(rng, P, b_person, b_status, hh_district, hh_surname), order)


# ---------------------------------------------------------------------------
# Column makers
# ---------------------------------------------------------------------------

def provider_ids(rng: np.random.Generator, P: People, person: np.ndarray,
                 spelled: list[tuple[int, str]], n_regular: int) -> pa.Array:
    """Identity numbers as a provider exports them: mostly clean, sometimes sloppy.

    About 3 % of the X-ending numbers come with a lowercase ``x`` and about 0.5 % of
    all rows with surrounding spaces. ``spelled`` forces the spelling of given rows.
    """
    ids = P.ids[person].astype(object)
    n = len(ids)
    sloppy_x = np.flatnonzero(P.id_is_x[person] & (rng.random(n) < 0.03))
    sloppy_x = sloppy_x[sloppy_x < n_regular]
    for i in sloppy_x:
        ids[i] = ids[i][:17] + "x"
    spaced = np.flatnonzero(rng.random(n) < 0.005)
    spaced = spaced[spaced < n_regular]
    for i in spaced:
        ids[i] = " " + ids[i] + (" " if i % 2 else "")
    for j, how in spelled:              # j counts rows after the regular ones
        i = n_regular + j
        if how == "lower":
            ids[i] = ids[i].lower()
        else:
            ids[i] = "  " + ids[i] + " "
    return pa.array(ids, type=pa.string())


def employer_names(rng: np.random.Generator, n: int) -> pa.Array:
    brand = list(BRAND_CHARS)
    b1 = rng.integers(0, len(brand), n)
    b2 = rng.integers(0, len(brand), n)
    ind = rng.integers(0, len(INDUSTRIES), n)
    names = join("深圳市", strings(brand, b1), strings(brand, b2), strings(INDUSTRIES, ind), "有限公司")
    # Distinct names: number the repeats (…有限公司 → …第二分公司 style suffix).
    values = names.to_pylist()
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        k = seen.get(v, 0)
        seen[v] = k + 1
        if k:
            values[i] = v.replace("有限公司", f"{k + 1}号有限公司")
    return pa.array(values, type=pa.string())


def _uscc(rng: np.random.Generator, region: np.ndarray, kind: np.ndarray) -> pa.Array:
    """Unified social credit codes (GB 32100) with valid check characters."""
    n = len(region)
    org = unique_codes(rng, n, 31 ** 8)
    digits = []
    rest = org.copy()
    for _ in range(8):
        digits.append(rest % 31)
        rest //= 31
    digits.reverse()
    # Organisation-code check character (GB 11714) over the 8 body characters.
    alphabet = np.array([int(c, 36) for c in _USCC_CHARS])
    org_sum = sum(alphabet[d] * w for d, w in zip(digits, _ORG_W))
    c9 = 11 - org_sum % 11
    c9_char = np.where(c9 == 10, _USCC_CHARS.index("X"), np.where(c9 == 11, 0, c9))
    head = [np.full(n, 9), np.where(kind == 0, 2, 1)]
    reg = [(region // 10 ** (5 - i)) % 10 for i in range(6)]
    seq17 = head + reg + digits + [c9_char]
    total = sum(s * w for s, w in zip(seq17, _USCC_W))
    check = (31 - total % 31) % 31
    chars = list(_USCC_CHARS)
    return join(*[strings(chars, s) for s in seq17 + [check]])


def _businesses(rng, P: People, person, status, hh_district, hh_surname) -> dict:
    nb = len(person)
    kind = (rng.random(nb) < 0.35).astype(np.int64)       # 0 sole proprietor, 1 company
    dist = hh_district[P.hh[person]]
    region = np.array([440303, 440304, 440305, 440306, 440307, 440308, 440309, 440310, 440311])[dist]
    sur = hh_surname[P.hh[person]]
    sole = join(strings(DISTRICTS, dist), strings(list(SURNAMES), sur), "记",
                strings(TRADES, rng.integers(0, len(TRADES), nb)))
    brand = list(BRAND_CHARS)
    company = join("深圳市", strings(brand, rng.integers(0, len(brand), nb)),
                   strings(brand, rng.integers(0, len(brand), nb)),
                   strings(INDUSTRIES, rng.integers(0, len(INDUSTRIES), nb)), "有限公司")
    return {
        "id_number": provider_ids(rng, P, person, [], nb),
        "business_id": _uscc(rng, region, kind),
        "business_name": pc.if_else(pa.array(kind == 1), company, sole),
        "status": strings(("active", "revoked"), status),
    }

