"""A provider's evaluation of a federated query over the opened subject list, in bulk (docs/query.md).

Per slot: JOIN / EXISTS / NOT EXISTS matched (after each table's WHERE), the joined rows capped
per subject, split by declared category (one-hot) for a provider GROUP BY, counted and summed
with per-subject clipping. The rows are grouped by slot with numpy (no per-row dicts unless a
WHERE needs them), and the summed cells are parsed in bulk (pyarrow), with the exact scalar
parsers (:func:`money.cell_cents`, ``int(Decimal(…))``) for any cell off the plain fast path.
"""
from __future__ import annotations

import logging
from itertools import chain
from decimal import Decimal
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pc_common import money
from pc_common.wire import MAX_VALUE_CENTS
from pc_node.secure_agg import dp_noise
from pc_node.secure_agg import query_release as qr
from pc_rules.query import QueryPlan

log = logging.getLogger(__name__)
#: What a further provider agency (``QueryPlan.indicator_providers``) evaluates: 0/1 per slot.
INDICATOR = "indicator"

# Plain cells parsed by the fast path; every other one goes through the exact scalar parser.
_DECIMAL_FAST = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$"
_INTEGER_FAST = r"^-?[0-9]{1,17}$"


def _scalar(text: str, ctype: str) -> int:
    """A cell in the plan's integer unit: cents for decimal columns, the number for integers."""
    if ctype == "decimal":
        return money.cell_cents(text)
    return 0 if text == "" else int(Decimal(text))


def cell_values(texts: Sequence[str], ctype: str) -> np.ndarray:
    """The cells in the plan's unit as an array (int64 when every value fits, else Python ints)."""
    if not len(texts):
        return np.zeros(0, dtype=np.int64)
    arr = pa.array(texts, type=pa.string())
    fast = pc.match_substring_regex(arr, _DECIMAL_FAST if ctype == "decimal" else _INTEGER_FAST)
    fast = np.asarray(fast.to_numpy(zero_copy_only=False), dtype=bool)
    out = np.zeros(len(texts), dtype=np.int64)
    if fast.any():
        sel = pa.array(np.flatnonzero(fast))
        part = pc.take(arr, sel)
        if ctype == "decimal":
            dot = np.asarray(pc.find_substring(part, ".").to_numpy(zero_copy_only=False), dtype=np.int64)
            length = np.asarray(pc.utf8_length(part).to_numpy(zero_copy_only=False), dtype=np.int64)
            places = np.where(dot < 0, 0, length - dot - 1)
            digits = pc.cast(pc.replace_substring(part, ".", ""), pa.int64()).to_numpy(zero_copy_only=False)
            out[fast] = digits * (10 ** (2 - places))
        else:
            out[fast] = pc.cast(part, pa.int64()).to_numpy(zero_copy_only=False)
    slow = np.flatnonzero(~fast & np.asarray(pc.not_equal(arr, "").to_numpy(zero_copy_only=False), dtype=bool))
    if len(slow):
        values = [_scalar(texts[i], ctype) for i in slow.tolist()]
        if any(abs(v) >= 1 << 62 for v in values):
            out = out.astype(object)
        out[slow] = values
    return out


def _group_sum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Σ of ``values`` over the runs beginning at ``starts`` (sorted), exactly."""
    if not len(values):
        return values
    if values.dtype != object:
        big = np.abs(values).max(initial=0)
        if big == 0 or int(big) * len(values) < (1 << 62):
            return np.add.reduceat(values, starts)
    return np.add.reduceat(values.astype(object), starts)


def _matched(runtime, plan: QueryPlan, source, keys: list[str]) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """(per key: some row passes the table's WHERE; the item index of every passing joined row,
    at most the row cap's first of each; those rows) — rows only for the JOIN."""
    meta = runtime.store.dataset(source.table.dataset)
    names = [c.name for c in meta.columns]
    is_join = source is plan.join
    wanted = (source.where.columns() if source.where is not None else set()) | (
        set(plan.sum_columns()) | ({plan.provider_group} if plan.provider_group else set()) if is_join else set())
    found = runtime.store.rows_for_keys(source.table.dataset, keys, columns=sorted(wanted))
    where = source.where
    per_key = [found.get(k, ()) for k in keys]
    if where is not None:
        per_key = [[r for r in rs if where.evaluate(dict(zip(names, r)))] if rs else rs for rs in per_key]
    counts = np.fromiter(map(len, per_key), dtype=np.int64, count=len(keys))
    if not is_join:
        return counts > 0, np.zeros(0, dtype=np.int64), []
    owner = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
    return counts > 0, owner, list(chain.from_iterable(per_key))


def evaluate_slots(runtime, plan: QueryPlan, items: list[tuple[int, str]], n: int,
                   bounds: dict[str, tuple[int, int]] | None = None,
                   cats: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Per aggregate vector (``plan.vectors()``; ``own:*`` stay 0 here) one integer per slot — with a provider GROUP BY per
    category and slot (index category·n + slot: one-hot). With DP ``bounds`` each subject's rows
    are capped at ``dp_noise.DP_ROW_CAP`` and its sums (per category) clipped into the bounds.
    At a further provider of the plan (``indicator_providers``): ``{"indicator": 0/1 per slot}``,
    1 where the subject passes all of this node's semi-joins."""
    keys = [ident for _, ident in items]
    slot_of = np.fromiter((s for s, _ in items), dtype=np.int64, count=len(items))
    ok = np.ones(len(items), dtype=bool)
    join_owner = np.zeros(0, dtype=np.int64)
    join_rows: list[list[str]] = []
    for s in plan.sources_of(runtime.node_id):       # this node's datasets only (several providers)
        has, owner, rows = _matched(runtime, plan, s, keys)
        ok &= has if s.kind != "not_exists" else ~has
        if s is plan.join:
            join_owner, join_rows = owner, rows
    if runtime.node_id != plan.main_provider():      # a further provider: its 0/1 indicator only
        indicator = np.zeros(n, dtype=np.int64)
        indicator[slot_of[ok]] = 1
        return {INDICATOR: indicator}
    width = n * max(len(cats), 1)
    out = {name: np.zeros(width, dtype=np.int64) for name in plan.vectors()}
    join = plan.join
    if join is None:                     # EXISTS / NOT EXISTS only: one "row" per passing subject
        out["subjects"][slot_of[ok]] = 1
        out["rows"][slot_of[ok]] = 1
        return out
    names = [c.name for c in runtime.store.dataset(join.table.dataset).columns]
    types = {c.name: c.type for c in runtime.store.dataset(join.table.dataset).columns}
    owner = join_owner
    keep = ok[owner] if len(owner) else np.zeros(0, dtype=bool)
    # Each subject's first rows only (store order, after WHERE): rank within its run of rows.
    first = np.r_[True, owner[1:] != owner[:-1]] if len(owner) else keep
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(owner)), 0)) if len(owner) else owner
    cap = qr.ROW_CAP if bounds is None else dp_noise.DP_ROW_CAP
    keep &= (np.arange(len(owner)) - run_start) < cap
    picked = np.flatnonzero(keep)
    index = slot_of[owner[picked]]
    if cats:
        # A value outside the declared categories joins no group. Failing the job instead
        # would tell the requester that one of its subjects holds such a row.
        at = names.index(plan.provider_group)
        cat_no = {c: i for i, c in enumerate(cats)}
        cat = np.fromiter((cat_no.get(join_rows[r][at], -1) for r in picked.tolist()), dtype=np.int64,
                          count=len(picked))
        declared = cat >= 0
        undeclared = int((~declared).sum())
        picked, index = picked[declared], cat[declared] * n + index[declared]
        if undeclared:   # for the data officer (the node's log), never in the requester's answer
            log.warning("query: %d matched rows of '%s' hold a '%s' value outside its declared categories;"
                        " they joined no group — correct the metadata", undeclared, join.table.ref,
                        plan.provider_group)
    order = np.argsort(index, kind="stable")
    picked, index = picked[order], index[order]
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]]) if len(index) else index
    targets = index[starts]
    out["subjects"][targets] = 1
    out["rows"][targets] = np.diff(np.r_[starts, len(index)])
    for col in plan.sum_columns():
        at = names.index(col)
        cells = cell_values([join_rows[r][at] for r in picked.tolist()], types[col])
        # Clip per subject (docs/query.md): an error would tell the others that some value is extreme.
        totals = np.minimum(np.maximum(_group_sum(cells, starts), -MAX_VALUE_CENTS), MAX_VALUE_CENTS)
        if bounds is not None:
            totals = np.minimum(np.maximum(totals, bounds[col][0]), bounds[col][1])
        out[f"sum:{col}"][targets] = totals
    return out
