"""A deterministic synthetic city for demos, tests and benchmarks.

``generate_city(out_dir, households, seed)`` writes one folder per agency with a
CSV per dataset and a ``<dataset>.toml`` column-metadata file next to it (format:
docs/rules.md, "Dataset metadata"), and copies the repository's ``rules/*.toml``
into ``out_dir/rules``. Everything is drawn from ``numpy.random.default_rng(seed)``
against a fixed reference date, so the same seed gives byte-identical files.

The city looks like Shenzhen: households of 1-6 people (head, spouse, children,
elderly parents) with Chinese names, resident identity numbers with real region
codes, birth dates that fit each member's role and a sex digit that fits the
sex; a latent economic class per household drives wages, pensions, vehicles,
homes and businesses so that roughly a third of the applicant households are
eligible under ``rules/dibao.toml``. Provider datasets also hold residents who
never applied (as real registries do). A few households are deliberate edge
cases; :class:`CitySummary` lists them with their expected dibao verdicts.

Identifiers in provider files are occasionally written with a lowercase ``x``
check character or with surrounding spaces, as real exports are; consumers must
normalise (strip, uppercase).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pc_node import idnum

__all__ = ["CitySummary", "DATASETS", "REFERENCE_DATE", "catalog", "generate_city",
           "id_check_char", "metadata_toml"]

REFERENCE_DATE = "2024-06-30"           # "today" in the synthetic city
_REF = np.datetime64(REFERENCE_DATE, "D")
_REPO_RULES = Path(__file__).resolve().parents[1] / "rules"

# ---------------------------------------------------------------------------
# Schema: datasets, columns and their catalog metadata
# ---------------------------------------------------------------------------

# (name, type, description, sharing, sensitivity, unit)
_ID = ("id_number", "text", "Resident identity number (GB 11643)", "conditional", 3, None)

DATASETS: dict[str, dict] = {
    "civil_affairs.applicants": {
        "description": "Social-assistance applicants and their household members (社会救助申请家庭成员)",
        "columns": [
            ("id_number", "text", "Resident identity number (GB 11643)", "closed", 3, None),
            ("household_id", "text", "Household case number", "closed", 2, None),
            ("name", "text", "Full name", "closed", 3, None),
            ("district", "text", "District of residence", "conditional", 1, None),
        ],
    },
    "public_security.vehicles": {
        "description": "Registered motor vehicles by owner (机动车登记)",
        "columns": [
            _ID,
            ("plate", "text", "Licence plate", "closed", 3, None),
            ("vehicle_type", "text", "car, truck or motorcycle", "conditional", 2, None),
            ("registered_on", "date", "Date of first registration", "conditional", 2, None),
        ],
    },
    "housing.properties": {
        "description": "Real-estate titles by owner (不动产登记)",
        "columns": [
            _ID,
            ("property_id", "text", "Real-estate title number", "closed", 3, None),
            ("usage", "text", "residential or commercial", "conditional", 2, None),
            ("area_m2", "decimal", "Floor area", "conditional", 2, "m2"),
            ("district", "text", "District of the property", "conditional", 1, None),
        ],
    },
    "hrss.pensions": {
        "description": "Basic pension payments (基本养老金发放)",
        "columns": [
            _ID,
            ("monthly_amount", "decimal", "Monthly pension paid", "conditional", 3, "CNY/month"),
        ],
    },
    "tax.wages": {
        "description": "Wage income reported by employers, one row per employer (个人所得税扣缴申报)",
        "columns": [
            _ID,
            ("employer", "text", "Withholding employer", "closed", 3, None),
            ("monthly_income", "decimal", "Monthly wage from this employer", "conditional", 4, "CNY/month"),
        ],
    },
    "market_regulation.businesses": {
        "description": "Businesses by legal representative or proprietor (市场主体登记)",
        "columns": [
            _ID,
            ("business_id", "text", "Unified social credit code (GB 32100)", "open", 1, None),
            ("business_name", "text", "Registered name", "open", 1, None),
            ("status", "text", "active or revoked", "open", 1, None),
        ],
    },
}


def catalog() -> dict[str, dict]:
    """The synthetic city's catalog: ``{"agency.dataset": {"key_column", "columns"}}``."""
    return {
        ds: {"key_column": "id_number", "columns": {c[0]: c[1] for c in spec["columns"]}}
        for ds, spec in DATASETS.items()
    }


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def metadata_toml(dataset: str) -> str:
    """The ``<dataset>.toml`` metadata text for one of :data:`DATASETS`."""
    spec = DATASETS[dataset]
    lines = [
        f"# Column metadata for {dataset} (format: docs/rules.md, \"Dataset metadata\")",
        'key_column = "id_number"',
        f"description = {_toml_str(spec['description'])}",
        "",
    ]
    for name, ctype, desc, sharing, sens, unit in spec["columns"]:
        lines.append(f"[columns.{name}]")
        lines.append(f'type = "{ctype}"')
        lines.append(f"description = {_toml_str(desc)}")
        lines.append(f'sharing = "{sharing}"')
        lines.append(f"sensitivity = {sens}")
        if unit:
            lines.append(f"unit = {_toml_str(unit)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Identity numbers (GB 11643-1999): vectorised check characters (the scalar
# reference is pc_node.idnum; tests check every generated number with it)
# ---------------------------------------------------------------------------

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)
_ID_CHECK = "10X98765432"


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits (see pc_node.idnum)."""
    return idnum.check_digit(first17)


def _id_check_vec(body: np.ndarray) -> np.ndarray:
    """Check-character index (into ``_ID_CHECK``) for 17-digit int64 bodies."""
    total = np.zeros(len(body), dtype=np.int64)
    rest = body.copy()
    for w in _ID_WEIGHTS[::-1]:
        total += (rest % 10) * w
        rest //= 10
    return total % 11


# ---------------------------------------------------------------------------
# Name and place vocabularies
# ---------------------------------------------------------------------------

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁"
    "任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官")
_MALE_CHARS = "伟强磊军勇杰涛明超刚平辉鹏华飞鑫波斌宇浩凯健俊帆旭宁龙林阳建国志文东海峰亮成兵晨博睿泽轩浩嘉豪"
_FEMALE_CHARS = "芳娜敏静丽艳娟霞燕玲桂英秀兰红梅琳婷雪慧颖倩洁佳晶玉萍琴云莉欣怡雨思萱悦彤婉妍诗涵梓"
_BRAND_CHARS = "华创腾鑫恒达盛泰信诚宏远海天安金瑞丰永祥嘉兴汇联智新科源佳顺和美通"
_INDUSTRIES = ("科技", "贸易", "物流", "餐饮管理", "建筑工程", "电子", "信息技术", "商贸", "物业管理",
               "家政服务", "制造", "医疗器械", "服装", "印刷", "装饰工程")
_TRADES = ("便利店", "餐馆", "五金店", "水果店", "理发店", "快递服务部", "电器维修部", "服装店", "早餐店", "茶行")

# Residence districts of the city (名称, weight) and their GB/T 2260 codes.
_DISTRICTS = ("罗湖区", "福田区", "南山区", "宝安区", "龙岗区", "盐田区", "龙华区", "坪山区", "光明区")
_DISTRICT_W = np.array([9, 13, 14, 22, 20, 2, 12, 3, 5], dtype=float)
_DISTRICT_CODES = (440303, 440304, 440305, 440306, 440307, 440308, 440306, 440307, 440306)
# Birthplace registration codes of people who moved to the city (real codes).
_OTHER_REGIONS = (
    110101, 110105, 110108, 130102, 310104, 310115, 320102, 330106, 350102, 360102, 360721, 370102,
    410105, 420106, 430102, 430524, 431102, 441302, 441581, 445202, 450103, 500103, 510107, 522601,
    610113,
)
_PLATE_PREFIXES = ("粤B", "粤B", "粤B", "粤B", "粤B", "粤B", "粤B", "粤B", "粤S", "湘A", "赣B", "桂A")
_PLATE_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"        # 34: no I, O
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"             # GB 32100 alphabet (31)
_USCC_W = np.array([1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28], dtype=np.int64)
_ORG_W = np.array([3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int64)  # GB 11714

POOR, MIDDLE, RICH = 0, 1, 2
DIBAO_LINE_CENTS = 110_000


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------


@dataclass
class CitySummary:
    out_dir: Path
    seed: int
    households: int                 # applicant households
    persons: int                    # applicants (rows of civil_affairs/applicants.csv)
    residents: int                  # everyone in the provider registries (applicants + others)
    rows: dict[str, int] = field(default_factory=dict)      # "agency.dataset" -> rows written
    # name -> {"household_id", "eligible", "failed"} expected under rules/dibao.toml
    edge_cases: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------


def _strings(values: list[str] | tuple[str, ...], idx: np.ndarray) -> pa.Array:
    return pa.array(list(values), type=pa.string()).take(pa.array(idx))


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _int_str(a: np.ndarray, width: int = 0) -> pa.Array:
    s = pa.array(a).cast(pa.string())
    return pc.utf8_lpad(s, width, "0") if width else s


def _money_str(cents: np.ndarray) -> pa.Array:
    return _join(_int_str(cents // 100), ".", _int_str(cents % 100, 2))


def _date_str(days: np.ndarray) -> pa.Array:
    return pa.array(days.astype("datetime64[D]").astype(str))


def _unique_codes(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    """``n`` distinct integers in ``[0, space)``, scattered (affine map of a range)."""
    if n > space:
        raise ValueError("code space too small")
    while True:
        stride = int(rng.integers(space // 3, space))
        if np.gcd(stride, space) == 1:
            break
    start = int(rng.integers(0, space))
    return (start + np.arange(n, dtype=np.int64) * stride) % space


@dataclass
class _People:
    hh: np.ndarray          # household index per person
    sex_male: np.ndarray
    age: np.ndarray
    birth: np.ndarray       # datetime64[D]
    ids: np.ndarray         # str (U18)
    id_is_x: np.ndarray
    names: pa.Array
    is_head: np.ndarray
    is_spouse: np.ndarray


def _make_people(rng: np.random.Generator, sizes: np.ndarray, hh_district: np.ndarray,
                 hh_surname: np.ndarray, hh_origin: np.ndarray) -> _People:
    H = len(sizes)
    N = int(sizes.sum())
    hh = np.repeat(np.arange(H), sizes)
    starts = np.cumsum(sizes) - sizes
    pos = np.arange(N) - np.repeat(starts, sizes)
    size_p = sizes[hh]

    # Head's age: single-person households are young workers or the elderly.
    head_age = rng.integers(24, 78, H)
    single = sizes == 1
    young = rng.random(H) < 0.45
    head_age[single & young] = rng.integers(20, 40, int((single & young).sum()))
    head_age[single & ~young] = rng.integers(58, 95, int((single & ~young).sum()))
    ha = head_age[hh]

    is_head = pos == 0
    spouse_hh = rng.random(H) < 0.88
    is_spouse = (pos == 1) & spouse_hh[hh]
    # Elderly parents in the last one/two slots of 5- and 6-person households,
    # unless the head is too old to have living parents (then grandchildren).
    n_elder = np.where(sizes == 6, 2, np.where(sizes == 5, 1, 0))
    elder_slot = (pos >= size_p - n_elder[hh]) & (pos >= 2)
    is_elder = elder_slot & (ha <= 66)
    is_grandchild = elder_slot & ~is_elder
    is_child = ~(is_head | is_spouse | is_elder | is_grandchild)

    age = np.empty(N, dtype=np.int64)
    age[is_head] = head_age
    age[is_spouse] = np.clip(ha[is_spouse] + rng.integers(-6, 5, int(is_spouse.sum())), 19, 99)
    n = int(is_elder.sum())
    age[is_elder] = np.minimum(ha[is_elder] + rng.integers(22, 34, n), 99)
    n = int(is_grandchild.sum())
    age[is_grandchild] = rng.integers(0, 16, n)
    span = np.clip(ha[is_child] - 20, 1, 40)
    age[is_child] = (rng.random(int(is_child.sum())) * span).astype(np.int64)

    male = rng.random(N) < 0.5
    head_male = rng.random(H) < 0.62
    male[is_head] = head_male
    male[is_spouse] = ~head_male[hh[is_spouse]]
    # Two elderly parents: father then mother.
    male[is_elder & (pos == size_p - 2)] = True
    male[is_elder & (pos == size_p - 1) & (n_elder[hh] == 2)] = False

    # Birth date consistent with age on the reference date.
    offset = age * 365 + age // 4 + rng.integers(0, 365, N)
    birth = _REF - offset.astype("timedelta64[D]")

    # Region of registration: children of the city get the district's code,
    # others mostly the household's origin.
    region = np.where(rng.random(N) < 0.75, hh_origin[hh],
                      np.array(_OTHER_REGIONS + _DISTRICT_CODES[:6])[rng.integers(0, 31, N)])
    local_child = (is_child | is_grandchild) & (age < 25)
    region[local_child] = np.array(_DISTRICT_CODES)[hh_district[hh[local_child]]]

    y = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    m = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    d = (birth - birth.astype("datetime64[M]")).astype(np.int64) + 1
    dates = y * 10_000 + m * 100 + d
    # Sequence: odd for men, even for women (GB 11643 order code).
    seq = rng.integers(0, 499, N) * 2 + np.where(male, 1, 2)
    body = (region.astype(np.int64) * 10**8 + dates) * 1000 + seq
    # Make identity numbers unique: redraw the sequence of later duplicates.
    for _ in range(100):
        _, first = np.unique(body, return_index=True)
        dup = np.ones(N, dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        k = int(dup.sum())
        seq_new = rng.integers(0, 499, k) * 2 + np.where(male[dup], 1, 2)
        body[dup] = body[dup] // 1000 * 1000 + seq_new
    else:  # pragma: no cover - 500 codes per sex, region and day
        raise RuntimeError("could not make identity numbers unique")
    check = _id_check_vec(body)
    ids = pc.binary_join_element_wise(pa.array(body).cast(pa.string()),
                                      _strings(list(_ID_CHECK), check), "")
    ids_np = np.asarray(ids.to_numpy(zero_copy_only=False), dtype="U18")

    # Names: household surname for head, children, grandchildren, elderly father.
    sur_pool = list(_SURNAMES) + list(_COMPOUND_SURNAMES)
    w = 1.0 / np.arange(1, len(sur_pool) + 1) ** 0.9
    w[-len(_COMPOUND_SURNAMES):] = w[-1] * 0.2
    w /= w.sum()
    own_sur = rng.choice(len(sur_pool), N, p=w)
    sur = hh_surname[hh].copy()
    keeps = is_head | is_child | is_grandchild | (is_elder & male)
    sur[~keeps] = own_sur[~keeps]
    male_chars, female_chars = list(_MALE_CHARS), list(_FEMALE_CHARS)
    u1, u2 = rng.random(N), rng.random(N)

    def given_char(u: np.ndarray) -> pa.Array:
        return pc.if_else(pa.array(male),
                          _strings(male_chars, (u * len(male_chars)).astype(np.int64)),
                          _strings(female_chars, (u * len(female_chars)).astype(np.int64)))

    given1, given2 = given_char(u1), given_char(u2)
    two = pa.array(rng.random(N) < 0.72)
    given = pc.if_else(two, _join(given1, given2), given1)
    names = _join(_strings(sur_pool, sur), given)
    return _People(hh, male, age, birth, ids_np, check == 2, names, is_head, is_spouse)


def generate_city(out_dir: str | Path, households: int = 10_000, seed: int = 1) -> CitySummary:
    """Write the synthetic city under ``out_dir``; see the module docstring."""
    if households < 1:
        raise ValueError("households must be at least 1")
    t0 = time.perf_counter()
    out = Path(out_dir)
    rng = np.random.default_rng(seed)

    H_app = households
    H = households + max(1, households * 3 // 10)       # plus residents who never applied
    sizes = rng.choice(np.arange(1, 7), H, p=[0.22, 0.28, 0.24, 0.15, 0.07, 0.04])
    hh_class = rng.choice(3, H, p=[0.36, 0.46, 0.18])
    hh_class[:H_app] = rng.choice(3, H_app, p=[0.40, 0.44, 0.16])  # applicants skew poorer
    hh_district = rng.choice(len(_DISTRICTS), H, p=_DISTRICT_W / _DISTRICT_W.sum())
    hh_origin = np.where(rng.random(H) < 0.55,
                         np.array(_DISTRICT_CODES)[hh_district],
                         np.array(_OTHER_REGIONS)[rng.integers(0, len(_OTHER_REGIONS), H)])
    w = 1.0 / np.arange(1, len(_SURNAMES) + 1) ** 0.9
    hh_surname = rng.choice(len(_SURNAMES), H, p=w / w.sum())

    P = _make_people(rng, sizes, hh_district, hh_surname, hh_origin)
    N = len(P.hh)
    cls = hh_class[P.hh]
    adult = P.age >= 18
    n_app = int(sizes[:H_app].sum())                    # applicants are persons [0, n_app)

    # --- wages (tax.wages) ------------------------------------------------
    working = adult & (P.age < np.where(P.sex_male, 60, 55))
    p_emp = np.array([0.42, 0.86, 0.90])[cls] * np.where(P.age < 23, 0.4, 1.0)
    employed = working & (rng.random(N) < p_emp)
    median = np.array([2100.0, 7500.0, 19000.0])[cls]
    sigma = np.array([0.35, 0.45, 0.5])[cls]
    wage = (median * np.exp(sigma * rng.standard_normal(N)) * 100).astype(np.int64)
    wage = np.maximum(wage, 60_000)
    n_jobs = np.where(employed, 1 + (rng.random(N) < 0.13) + (rng.random(N) < 0.03), 0)
    w_person = np.repeat(np.arange(N), n_jobs)
    rank = np.arange(len(w_person)) - np.repeat(np.cumsum(n_jobs) - n_jobs, n_jobs)
    total = wage[w_person]
    k = n_jobs[w_person]
    f0 = rng.uniform(0.5, 0.85, N)[w_person]
    a0 = np.where(k == 1, total, (total * f0).astype(np.int64))
    rest = total - a0
    g = rng.uniform(0.3, 0.7, N)[w_person]
    a1 = np.where(k == 2, rest, (rest * g).astype(np.int64))
    a2 = rest - a1
    w_amount = np.choose(np.minimum(rank, 2), [a0, a1, a2])
    n_emp = max(50, N // 150)
    emp_w = 1.0 / np.arange(1, n_emp + 1) ** 0.8
    w_employer = rng.choice(n_emp, len(w_person), p=emp_w / emp_w.sum())
    # A person's several jobs are at different employers.
    w_employer = (w_employer + rank * 7919) % n_emp
    employers = _employer_names(rng, n_emp)

    # --- pensions (hrss.pensions) -----------------------------------------
    retired = P.age >= np.where(P.sex_male, 60, 55)
    pensioned = retired & (rng.random(N) < 0.9)
    p_median = np.array([650.0, 3600.0, 7000.0])[cls]
    p_sigma = np.array([0.5, 0.35, 0.4])[cls]
    pension = (p_median * np.exp(p_sigma * rng.standard_normal(N)) * 100).astype(np.int64)
    pension = np.maximum(pension, 15_000)
    p_person = np.flatnonzero(pensioned)
    p_amount = pension[p_person]

    # --- vehicles (public_security.vehicles) ------------------------------
    u = rng.random(N)
    p_car = np.array([0.03, 0.40, 0.75])[cls] * adult
    n_car = (u < p_car).astype(np.int64) + (u < p_car * 0.2)
    n_moto = (rng.random(N) < np.array([0.07, 0.04, 0.02])[cls] * adult).astype(np.int64)
    n_truck = (rng.random(N) < np.array([0.01, 0.03, 0.05])[cls] * adult).astype(np.int64)
    v_person = np.concatenate([np.repeat(np.arange(N), n) for n in (n_car, n_truck, n_moto)])
    v_type = np.concatenate([np.full(int(n.sum()), t) for t, n in enumerate((n_car, n_truck, n_moto))])

    # --- properties (housing.properties) -----------------------------------
    n_res = np.choose(hh_class, [
        rng.choice(3, H, p=[0.52, 0.46, 0.02]),
        rng.choice(3, H, p=[0.08, 0.67, 0.25]),
        rng.choice(4, H, p=[0.02, 0.38, 0.40, 0.20]),
    ])
    n_com = (rng.random(H) < np.array([0.01, 0.06, 0.30])[hh_class]).astype(np.int64)
    head_of = np.cumsum(sizes) - sizes
    spouse_of = np.where((sizes >= 2), head_of + 1, head_of)
    spouse_of = np.where(P.is_spouse[np.minimum(spouse_of, N - 1)], spouse_of, head_of)
    pr_hh = np.concatenate([np.repeat(np.arange(H), n_res), np.repeat(np.arange(H), n_com)])
    pr_usage = np.concatenate([np.zeros(int(n_res.sum()), np.int64), np.ones(int(n_com.sum()), np.int64)])
    pr_person = np.where(rng.random(len(pr_hh)) < 0.7, head_of[pr_hh], spouse_of[pr_hh])

    # --- businesses (market_regulation.businesses) --------------------------
    b_person = np.flatnonzero(adult & (rng.random(N) < np.array([0.02, 0.06, 0.20])[cls]))
    b_status = (rng.random(len(b_person)) < 0.2).astype(np.int64)   # 1 = revoked

    # --- edge cases (applicant households whose records are set by hand) ----
    wages_extra, pensions_extra, vehicles_extra, props_extra = [], [], [], []
    spelled: dict[str, list[tuple[int, str]]] = {"vehicles": [], "properties": []}
    edge_cases, edge_hh = _edge_cases(P, sizes[:H_app], hh_class[:H_app], head_of, spouse_of,
                                      wages_extra, pensions_extra, vehicles_extra, props_extra,
                                      spelled)
    edge_person = np.isin(P.hh, np.array(sorted(edge_hh), dtype=np.int64))

    def keep(person_idx: np.ndarray) -> np.ndarray:
        return ~edge_person[person_idx]

    m = keep(w_person)
    w_person, w_amount, w_employer = w_person[m], w_amount[m], w_employer[m]
    m = keep(p_person)
    p_person, p_amount = p_person[m], p_amount[m]
    m = keep(v_person)
    v_person, v_type = v_person[m], v_type[m]
    m = keep(pr_person)
    pr_person, pr_usage, pr_hh = pr_person[m], pr_usage[m], pr_hh[m]
    m = keep(b_person)
    b_person, b_status = b_person[m], b_status[m]
    n_regular = {"vehicles": len(v_person), "properties": len(pr_person)}
    if wages_extra:
        e = np.array(wages_extra, dtype=np.int64)
        w_person = np.concatenate([w_person, e[:, 0]])
        w_amount = np.concatenate([w_amount, e[:, 1]])
        w_employer = np.concatenate([w_employer, e[:, 2]])
    if pensions_extra:
        e = np.array(pensions_extra, dtype=np.int64)
        p_person = np.concatenate([p_person, e[:, 0]])
        p_amount = np.concatenate([p_amount, e[:, 1]])
    if vehicles_extra:
        e = np.array(vehicles_extra, dtype=np.int64)
        v_person = np.concatenate([v_person, e[:, 0]])
        v_type = np.concatenate([v_type, e[:, 1]])
    if props_extra:
        e = np.array(props_extra, dtype=np.int64)
        pr_person = np.concatenate([pr_person, e[:, 0]])
        pr_usage = np.concatenate([pr_usage, e[:, 1]])
        pr_hh = np.concatenate([pr_hh, P.hh[e[:, 0]]])

    # --- write ----------------------------------------------------------------
    rows: dict[str, int] = {}
    hh_ids = _join("H", _int_str(np.arange(1, H_app + 1), 7))

    applicants = {
        "id_number": pa.array(P.ids[:n_app]),
        "household_id": hh_ids.take(pa.array(P.hh[:n_app])),
        "name": P.names.slice(0, n_app),
        "district": _strings(_DISTRICTS, hh_district[P.hh[:n_app]]),
    }
    rows["civil_affairs.applicants"] = _write(out, "civil_affairs.applicants", applicants)

    # Vehicles.
    order = rng.permutation(len(v_person))
    nv = len(v_person)
    # Plates: two letters-or-digits then three digits (粤B·A7123), or five
    # letters-or-digits when a very large city needs more numbers.
    radices = [34, 34, 10, 10, 10] if nv <= 34 * 34 * 1000 else [34] * 5
    rest_code = _unique_codes(rng, nv, int(np.prod(radices)))
    chars = []
    for r in reversed(radices):
        chars.append(rest_code % r)
        rest_code //= r
    plate = _join(_strings(_PLATE_PREFIXES, rng.integers(0, len(_PLATE_PREFIXES), nv)),
                  *[_strings(list(_PLATE_CHARS), c) for c in reversed(chars)])
    adult_day = P.birth[v_person] + np.timedelta64(18 * 365 + 5, "D")
    first = np.maximum(adult_day, np.datetime64("2000-01-01"))
    span = np.maximum((_REF - first).astype(np.int64), 1)
    reg = first + (rng.random(nv) * span).astype("timedelta64[D]")
    v_ids = _provider_ids(rng, P, v_person, spelled["vehicles"], n_regular["vehicles"])
    vehicles = {
        "id_number": v_ids,
        "plate": plate,
        "vehicle_type": _strings(("car", "truck", "motorcycle"), v_type),
        "registered_on": _date_str(reg),
    }
    rows["public_security.vehicles"] = _write(out, "public_security.vehicles", vehicles, order)

    # Properties.
    npr = len(pr_person)
    order = rng.permutation(npr)
    title_no = _unique_codes(rng, npr, 10**7)
    year = rng.integers(2000, 2025, npr)
    pid = _join("粤(", _int_str(year), ")深圳市不动产权第", _int_str(title_no, 7), "号")
    area = np.where(pr_usage == 0,
                    np.exp(np.log(np.array([62.0, 88.0, 135.0])[hh_class[pr_hh]]) + 0.3 * rng.standard_normal(npr)),
                    np.exp(np.log(110.0) + 0.6 * rng.standard_normal(npr)))
    area_cents = np.clip((area * 100).astype(np.int64), 1500, 200_000_00)
    pr_district = np.where(rng.random(npr) < 0.8, hh_district[pr_hh], rng.integers(0, len(_DISTRICTS), npr))
    properties = {
        "id_number": _provider_ids(rng, P, pr_person, spelled["properties"], n_regular["properties"]),
        "property_id": pid,
        "usage": _strings(("residential", "commercial"), pr_usage),
        "area_m2": _money_str(area_cents),
        "district": _strings(_DISTRICTS, pr_district),
    }
    rows["housing.properties"] = _write(out, "housing.properties", properties, order)

    # Pensions.
    order = rng.permutation(len(p_person))
    pensions = {
        "id_number": _provider_ids(rng, P, p_person, [], len(p_person)),
        "monthly_amount": _money_str(p_amount),
    }
    rows["hrss.pensions"] = _write(out, "hrss.pensions", pensions, order)

    # Wages.
    order = rng.permutation(len(w_person))
    wages = {
        "id_number": _provider_ids(rng, P, w_person, [], len(w_person)),
        "employer": employers.take(pa.array(w_employer)),
        "monthly_income": _money_str(w_amount),
    }
    rows["tax.wages"] = _write(out, "tax.wages", wages, order)

    # Businesses.
    nb = len(b_person)
    order = rng.permutation(nb)
    rows["market_regulation.businesses"] = _write(
        out, "market_regulation.businesses",
        _businesses(rng, P, b_person, b_status, hh_district, hh_surname), order)

    # Rules shipped with the repository.
    if _REPO_RULES.is_dir():
        (out / "rules").mkdir(parents=True, exist_ok=True)
        for f in sorted(_REPO_RULES.glob("*.toml")):
            shutil.copyfile(f, out / "rules" / f.name)

    hh_label = {i: f"H{i + 1:07d}" for i in edge_hh}
    for case in edge_cases.values():
        case["household_id"] = hh_label[case.pop("household")]
    return CitySummary(
        out_dir=out, seed=seed, households=H_app, persons=n_app, residents=N, rows=rows,
        edge_cases=edge_cases, seconds=time.perf_counter() - t0,
    )


def _provider_ids(rng: np.random.Generator, P: _People, person: np.ndarray,
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


def _employer_names(rng: np.random.Generator, n: int) -> pa.Array:
    brand = list(_BRAND_CHARS)
    b1 = rng.integers(0, len(brand), n)
    b2 = rng.integers(0, len(brand), n)
    ind = rng.integers(0, len(_INDUSTRIES), n)
    names = _join("深圳市", _strings(brand, b1), _strings(brand, b2), _strings(_INDUSTRIES, ind), "有限公司")
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
    org = _unique_codes(rng, n, 31 ** 8)
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
    return _join(*[_strings(chars, s) for s in seq17 + [check]])


def _businesses(rng, P: _People, person, status, hh_district, hh_surname) -> dict:
    nb = len(person)
    kind = (rng.random(nb) < 0.35).astype(np.int64)       # 0 sole proprietor, 1 company
    dist = hh_district[P.hh[person]]
    region = np.array([440303, 440304, 440305, 440306, 440307, 440308, 440309, 440310, 440311])[dist]
    sur = hh_surname[P.hh[person]]
    sole = _join(_strings(_DISTRICTS, dist), _strings(list(_SURNAMES), sur), "记",
                 _strings(_TRADES, rng.integers(0, len(_TRADES), nb)))
    brand = list(_BRAND_CHARS)
    company = _join("深圳市", _strings(brand, rng.integers(0, len(brand), nb)),
                    _strings(brand, rng.integers(0, len(brand), nb)),
                    _strings(_INDUSTRIES, rng.integers(0, len(_INDUSTRIES), nb)), "有限公司")
    return {
        "id_number": _provider_ids(rng, P, person, [], nb),
        "business_id": _uscc(rng, region, kind),
        "business_name": pc.if_else(pa.array(kind == 1), company, sole),
        "status": _strings(("active", "revoked"), status),
    }


def _edge_cases(P: _People, sizes, hh_class, head_of, spouse_of, wages, pensions, vehicles,
                props, spelled) -> tuple[dict[str, dict], set[int]]:
    """Pick applicant households and give them hand-made records.

    Records are (person, …) tuples appended after the regular rows; ``spelled``
    marks rows (index counted after the regular rows) to misspell on purpose.
    Returns the cases with their expected dibao outcome, and the households used.
    """
    used: set[int] = set()
    cases: dict[str, dict] = {}
    H = len(sizes)
    x_hh = np.zeros(H, dtype=bool)
    x_hh[P.hh[(P.hh < H) & P.id_is_x & P.is_head]] = True

    def pick(min_size: int, max_size: int = 6, need_x_head: bool = False) -> Optional[int]:
        ok = (sizes >= min_size) & (sizes <= max_size) & (hh_class == POOR)
        if need_x_head:
            ok &= x_hh
        for h in np.flatnonzero(ok)[:50]:
            if int(h) not in used:
                used.add(int(h))
                return int(h)
        return None

    line = DIBAO_LINE_CENTS
    # Only vehicle is a motorcycle: still passes no_car.
    h = pick(2, 4)
    if h is not None:
        head = int(head_of[h])
        vehicles.append((head, 2))
        props.append((head, 0))
        wages.append((head, line * int(sizes[h]) - 30_000, 0))
        cases["motorcycle_only"] = {"household": h, "eligible": True, "failed": []}
    # Income exactly on the line (a wage plus a pension, summed across sources): fails.
    h = pick(2, 4)
    if h is not None:
        head, other = int(head_of[h]), int(spouse_of[h])
        pensions.append((other, 50_000))
        wages.append((head, line * int(sizes[h]) - 50_000, 1))
        cases["income_on_line"] = {"household": h, "eligible": False, "failed": ["income_below_line"]}
    # Several wage records that only together exceed the line.
    h = pick(2, 2)
    if h is not None:
        head = int(head_of[h])
        for amount, emp in ((90_000, 2), (80_000, 3), (60_000, 4)):
            wages.append((head, amount, emp))
        props.append((head, 0))
        cases["several_wage_records"] = {"household": h, "eligible": False, "failed": ["income_below_line"]}
    # A car recorded under a lowercase-x identity number: must still be found.
    h = pick(1, 6, need_x_head=True)
    if h is None:
        h = pick(1, 6)
        if h is not None and not _give_x_check(P, int(head_of[h])):
            h = None
    if h is not None:
        head = int(head_of[h])
        spelled["vehicles"].append((len(vehicles), "lower"))
        vehicles.append((head, 0))
        cases["lowercase_x_car"] = {"household": h, "eligible": False, "failed": ["no_car"]}
    # A second home recorded under an identity number with surrounding spaces.
    h = pick(2, 4)
    if h is not None:
        head, sp = int(head_of[h]), int(spouse_of[h])
        props.append((head, 0))
        spelled["properties"].append((len(props), "spaces"))
        props.append((sp if sp != head else head, 0))
        cases["spaced_id_second_home"] = {"household": h, "eligible": False, "failed": ["at_most_one_home"]}
    # A shop plus one home: the shop is not residential, so the household passes.
    h = pick(1, 3)
    if h is not None:
        head = int(head_of[h])
        props.append((head, 0))
        props.append((head, 1))
        cases["home_and_shop"] = {"household": h, "eligible": True, "failed": []}
    return cases, used


def _give_x_check(P: _People, person: int) -> bool:
    """Change one person's order code so the check character is X (keeps the sex digit)."""
    current = P.ids[person]
    for seq in range(int(current[16]) % 2 or 2, 1000, 2):
        body = current[:14] + f"{seq:03d}"
        if id_check_char(body) == "X" and not (P.ids == body + "X").any():
            P.ids[person] = body + "X"
            P.id_is_x[person] = True
            return True
    return False  # pragma: no cover - some order code always works


def _write(out: Path, dataset: str, columns: dict[str, pa.Array],
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


def random_identity_numbers(n: int, seed: int = 0, regions: tuple[int, ...] = (650102, 650103, 650104, 650105)
                            ) -> list[str]:
    """``n`` distinct-ish valid identity numbers outside the city's region codes (for padding and
    benchmarks): birth dates 1940–2009, random order codes, correct check characters."""
    rng = np.random.default_rng(seed)
    region = np.array(regions, dtype=np.int64)[rng.integers(0, len(regions), n)]
    birth = np.datetime64("1940-01-01") + rng.integers(0, 365 * 70, n).astype("timedelta64[D]")
    y = birth.astype("datetime64[Y]").astype(np.int64) + 1970
    m = birth.astype("datetime64[M]").astype(np.int64) % 12 + 1
    d = (birth - birth.astype("datetime64[M]")).astype(np.int64) + 1
    body = region * 10**11 + (y * 10000 + m * 100 + d) * 10**3 + rng.integers(0, 1000, n)
    check = np.array(list("10X98765432"))[_id_check_vec(body)]
    return [f"{b:017d}{c}" for b, c in zip(body.tolist(), check.tolist())]
