"""A provider's bulk evaluation of a federated query (pc_node.steps.query_eval) equals the plain
per-row definition: WHERE per table, JOIN / EXISTS / NOT EXISTS, the row cap, one-hot categories
(undeclared values join no group), per-subject clipping and DP bounds; cells parsed exactly."""
from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest

from pc_common import money
from pc_common.errors import InvalidInput
from pc_common.wire import MAX_VALUE_CENTS
from pc_node.secure_agg import dp_noise
from pc_node.secure_agg import query_release as qr
from pc_node.steps import query_eval
from pc_rules.metadata import ColumnMeta, DatasetMeta
from pc_rules.query import parse_query

CATS = ("car", "truck", "bus")


class _Store:
    def __init__(self, tables: dict[str, tuple[list[ColumnMeta], dict[str, list[list[str]]]]]):
        self.tables = tables

    def dataset(self, name):
        return DatasetMeta(name, "id_number", "", self.tables[name][0])

    def rows_for_keys(self, name, keys, columns=None):
        cols, rows = self.tables[name]
        keep = {i for i, c in enumerate(cols) if columns is None or c.name in columns}
        return {k: [[v if j in keep else "" for j, v in enumerate(r)] for r in rows[k]] for k in keys if k in rows}


class _Runtime:
    def __init__(self, store, node_id="tax"):
        self.store = store
        self.node_id = node_id


def _reference(rt, plan, items, n, bounds, cats):
    """The per-row definition (the former implementation)."""
    matched = {}
    for s in plan.providers_sources():
        meta = rt.store.dataset(s.table.dataset)
        names = [c.name for c in meta.columns]
        found = rt.store.rows_for_keys(s.table.dataset, [k for _, k in items])
        matched[s.table.alias] = {k: [r for r in (dict(zip(names, x)) for x in found.get(k, []))
                                      if s.where is None or s.where.evaluate(r)] for _, k in items}
    types = {c.name: c.type for c in rt.store.dataset(plan.join.table.dataset).columns} if plan.join else {}
    out = {name: [0] * (n * max(len(cats), 1)) for name in plan.vectors()}
    cap = qr.ROW_CAP if bounds is None else dp_noise.DP_ROW_CAP
    for slot, k in items:
        if not all(bool(matched[s.table.alias][k]) == (s.kind != "not_exists") for s in plan.providers_sources()):
            continue
        jrows = matched[plan.join.table.alias][k][:cap] if plan.join else []
        parts = {0: jrows}
        if cats:
            parts = {}
            for r in jrows:
                if r[plan.provider_group] in cats:
                    parts.setdefault(cats.index(r[plan.provider_group]), []).append(r)
        for c, rs in parts.items():
            i = c * n + slot
            out["subjects"][i] = 1
            out["rows"][i] = len(rs) if plan.join else 1
            for col in plan.sum_columns():
                cell = (money.cell_cents if types[col] == "decimal" else
                        lambda x: 0 if x == "" else int(Decimal(x)))
                total = qr.clamp_subject_sum(sum(cell(r[col]) for r in rs))
                if bounds is not None:
                    total = min(max(total, bounds[col][0]), bounds[col][1])
                out[f"sum:{col}"][i] = total
    return out


def _city(seed: int, subjects: int = 300):
    rng = random.Random(seed)
    ids = [f"{i:018d}" for i in range(subjects)]
    wage_cols = [ColumnMeta("monthly_income", "decimal"), ColumnMeta("employer", "text"),
                 ColumnMeta("hours", "integer"), ColumnMeta("kind", "text", categories=list(CATS))]
    amounts = ["", "0", "12", "12.5", "12.50", "-3.07", "1.500", "99999999999999999.99", " 7.10",
               "123456789012345.67", "5"]
    wages = {}
    for k in ids:
        if rng.random() < 0.7:
            wages[k] = [[rng.choice(amounts) if rng.random() < 0.2 else f"{rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}",
                         rng.choice(["self", "acme", "city"]), rng.choice(["", "40", "-2", "007", str(10**12)]),
                         rng.choice(CATS + ("boat",))] for _ in range(rng.choice([1, 1, 2, 3, 12]))]
    companies = {k: [[rng.choice(["active", "closed"])]] for k in ids if rng.random() < 0.5}
    store = _Store({"wages": (wage_cols, wages), "companies": ([ColumnMeta("status", "text")], companies)})
    items = list(zip(rng.sample(range(subjects), subjects), ids))
    return _Runtime(store), items


QUERIES = [
    "SELECT a.d, COUNT(*), SUM(w.monthly_income), SUM(w.hours) FROM ca.people a JOIN tax.wages w"
    " ON a.id_number = w.id_number GROUP BY a.d",
    "SELECT a.d, COUNT(*), AVG(w.monthly_income) FROM ca.people a JOIN tax.wages w ON a.id_number = w.id_number"
    " WHERE w.employer <> 'self' AND EXISTS (SELECT 1 FROM tax.companies c WHERE c.id_number = a.id_number"
    " AND c.status = 'active') GROUP BY a.d",
    "SELECT a.d, w.kind, COUNT(*), SUM(w.monthly_income) FROM ca.people a JOIN tax.wages w"
    " ON a.id_number = w.id_number GROUP BY a.d, w.kind",
    "SELECT a.d, COUNT(*) FROM ca.people a WHERE NOT EXISTS (SELECT 1 FROM tax.companies c"
    " WHERE c.id_number = a.id_number AND c.status = 'closed') GROUP BY a.d",
]


@pytest.mark.parametrize("sql", QUERIES)
@pytest.mark.parametrize("dp", [False, True])
def test_bulk_evaluation_equals_the_per_row_definition(sql, dp, monkeypatch):
    monkeypatch.setattr(qr, "ROW_CAP", 5)        # so that the cap bites on this small city
    plan = parse_query(sql)
    cats = CATS if plan.provider_group else ()
    bounds = {c: (-50, 40_000_000) for c in plan.sum_columns()} if dp else None
    for seed in range(3):
        rt, items = _city(seed)
        got = query_eval.evaluate_slots(rt, plan, items, len(items), bounds, cats)
        want = _reference(rt, plan, items, len(items), bounds, cats)
        assert list(got) == list(want)
        for name in want:
            assert got[name].tolist() == want[name], name
        assert got["subjects"].sum() > 0


def test_cells_parse_exactly_and_refuse_what_the_scalar_parser_refuses():
    texts = ["", "0", "-0", "12", "12.5", "12.50", "-3.07", "1.500", " 7.10", "007", "123456789012345.67",
             "99999999999999999.99", str(10**30)]
    assert query_eval.cell_values(texts, "decimal").tolist() == [money.cell_cents(x) for x in texts]
    ints = ["", "0", "-2", "007", str(10**17), str(-10**25), "4.9"]
    assert query_eval.cell_values(ints, "integer").tolist() == [0 if x == "" else int(Decimal(x)) for x in ints]
    with pytest.raises(InvalidInput):
        query_eval.cell_values(["1.234"], "decimal")


def test_extreme_sums_are_clipped_not_wrapped():
    plan = parse_query(QUERIES[0])
    big = str(10**17)
    store = _Store({"wages": ([ColumnMeta("monthly_income", "decimal"), ColumnMeta("employer", "text"),
                               ColumnMeta("hours", "integer"), ColumnMeta("kind", "text")],
                              {"a": [[big, "x", big, ""]] * 4, "b": [["-" + big, "x", "-" + big, ""]] * 4})})
    got = query_eval.evaluate_slots(_Runtime(store), plan, [(0, "a"), (1, "b")], 2)
    assert got["sum:monthly_income"].tolist() == [MAX_VALUE_CENTS, -MAX_VALUE_CENTS]
    assert got["sum:hours"].tolist() == [MAX_VALUE_CENTS, -MAX_VALUE_CENTS]
    assert np.array_equal(got["rows"], [4, 4])


def test_two_provider_agencies_each_evaluate_their_own_datasets_and_the_product_is_the_join(monkeypatch):
    """The JOIN's agency answers its vectors ignoring the other agency's semi-join; the other answers
    a 0/1 indicator; their slot-wise product (what the coordinator computes under encryption) is
    the whole query's answer. (Two agencies are off in production: pc_rules.query.MAX_PROVIDER_AGENCIES.)"""
    from pc_rules import query
    monkeypatch.setattr(query, "MAX_PROVIDER_AGENCIES", 2)
    both = ("SELECT a.d, COUNT(*), SUM(w.monthly_income) FROM ca.people a JOIN tax.wages w ON a.id_number ="
            " w.id_number WHERE NOT EXISTS (SELECT 1 FROM ps.companies c WHERE c.id_number = a.id_number AND"
            " c.status = 'closed') GROUP BY a.d")
    plan = parse_query(both)
    assert plan.main_provider() == "tax" and plan.indicator_providers() == ["ps"]
    for seed in range(3):
        rt, items = _city(seed)
        main = query_eval.evaluate_slots(rt, plan, items, len(items))
        ind = query_eval.evaluate_slots(_Runtime(rt.store, "ps"), plan, items, len(items))
        assert list(ind) == ["indicator"] and set(ind["indicator"].tolist()) == {0, 1}
        want = _reference(rt, plan, items, len(items), None, ())
        for name in want:
            assert (main[name] * ind["indicator"]).tolist() == want[name], name
        assert (main["subjects"] * (1 - ind["indicator"])).sum() > 0      # the NOT EXISTS removes someone
