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

The city is written by three modules: ``datasets`` (columns and metadata), ``people``
(households, names, identity numbers) and ``tables`` (one writer per agency dataset); this one
draws the records that link them and picks the edge cases.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pc_devkit.datasets import DATASETS, catalog, metadata_toml
from pc_devkit.people import (DISTRICT_CODES, DISTRICT_W, DISTRICTS, OTHER_REGIONS, REFERENCE_DATE, SURNAMES, People,
                              give_x_check, id_check_char, make_people, random_identity_numbers)
from pc_devkit.tables import (employer_names, write_applicants, write_businesses, write_pensions, write_properties,
                              write_vehicles, write_wages)

__all__ = ["CitySummary", "DATASETS", "REFERENCE_DATE", "catalog", "generate_city",
           "id_check_char", "metadata_toml", "random_identity_numbers"]

_REPO_RULES = Path(__file__).resolve().parents[1] / "rules"

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
    hh_district = rng.choice(len(DISTRICTS), H, p=DISTRICT_W / DISTRICT_W.sum())
    hh_origin = np.where(rng.random(H) < 0.55,
                         np.array(DISTRICT_CODES)[hh_district],
                         np.array(OTHER_REGIONS)[rng.integers(0, len(OTHER_REGIONS), H)])
    w = 1.0 / np.arange(1, len(SURNAMES) + 1) ** 0.9
    hh_surname = rng.choice(len(SURNAMES), H, p=w / w.sum())

    P = make_people(rng, sizes, hh_district, hh_surname, hh_origin)
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
    employers = employer_names(rng, n_emp)

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

    # --- write (one writer per dataset, in a fixed order: they draw from rng) ----
    rows: dict[str, int] = {
        "civil_affairs.applicants": write_applicants(out, P, n_app, H_app, hh_district),
        "public_security.vehicles": write_vehicles(out, rng, P, v_person, v_type, spelled["vehicles"],
                                                   n_regular["vehicles"]),
        "housing.properties": write_properties(out, rng, P, pr_person, pr_usage, pr_hh, hh_class, hh_district,
                                               spelled["properties"], n_regular["properties"]),
        "hrss.pensions": write_pensions(out, rng, P, p_person, p_amount),
        "tax.wages": write_wages(out, rng, P, w_person, w_amount, w_employer, employers),
        "market_regulation.businesses": write_businesses(out, rng, P, b_person, b_status, hh_district, hh_surname),
    }

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


def _edge_cases(P: People, sizes, hh_class, head_of, spouse_of, wages, pensions, vehicles,
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
        if h is not None and not give_x_check(P, int(head_of[h])):
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

