"""What a provider pins of a rule: the digest of its criteria, and the thresholds it compares.

A provider's grant that allows comparisons either names the rules it serves — rule id plus
:func:`criteria_digest` of the criteria touching the provider — or bounds every threshold and
the number of comparisons per column (``pc_node.policy``). Requester, coordinator, officer
and provider all compute the digest here, so they agree on it byte for byte.

The digest is SM3 over canonical JSON (sorted keys, no blanks, UTF-8) of::

    {"v": 1, "rule": "dibao", "agency": "housing",
     "criteria": [{"name": …, "type": …, "source": … | "sources": [...], "where": canonical text | null,
                   "max": int | null, "per_member_cents": int | null, "limit_cents": int | null}, …]}

with the criteria touching the agency sorted by name. A criterion with several sources keeps
all of them (another agency's source changes what this agency's values are added to). Money is
in integer cents, so ``1100`` and ``1100.00`` give the same digest; a ``where`` is its
canonical text (``Expr.to_text``). Criteria of other agencies are not covered: changing them
does not change this agency's digest.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Union

from pc_common import gm

__all__ = ["DIGEST_VERSION", "Threshold", "canonical_criteria", "compared_columns", "criteria_digest",
           "criteria_touching", "thresholds"]

DIGEST_VERSION = 1
ORDERING_OPS = ("<", "<=", ">", ">=")
_DATE_LITERAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")

Value = Union[int, Decimal, str]


def criteria_touching(rule, agency: str, dataset: str | None = None) -> list:
    """The rule's criteria that read ``agency``'s data (only ``dataset`` of it, when given), in rule order."""
    out = []
    for c in rule.criteria:
        refs = [ref.split(".") for ref in c.datasets()]
        if any(a == agency and (dataset is None or d == dataset) for a, d in refs):
            out.append(c)
    return out


def _criterion_doc(c) -> dict:
    doc: dict = {"name": c.name, "type": c.type, "where": c.where.to_text() if c.where is not None else None,
                 "max": c.max, "per_member_cents": c.per_member_cents, "limit_cents": c.limit_cents}
    if c.type == "sum_below":
        doc["sources"] = list(c.sources)
    else:
        doc["source"] = c.source
    return doc


def canonical_criteria(rule, agency: str) -> bytes:
    """The canonical JSON that :func:`criteria_digest` hashes."""
    doc = {"v": DIGEST_VERSION, "rule": rule.id, "agency": agency,
           "criteria": sorted((_criterion_doc(c) for c in criteria_touching(rule, agency)),
                              key=lambda d: d["name"])}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def criteria_digest(rule, agency: str) -> str:
    """SM3 (64 lowercase hex digits) of the rule's criteria touching ``agency``."""
    return gm.sm3(canonical_criteria(rule, agency)).hex()


@dataclass(frozen=True)
class Threshold:
    """One value a criterion compares with ``agency.dataset``'s data.

    ``field`` is ``max``, ``per_member``, ``limit`` or ``where``; ``keys`` are the bounds that
    may cover it, most specific first (a column, then the criterion type); ``value`` is in the
    rule's own units (yuan for money, a count for ``max``, a literal for ``where``).
    """

    criterion: str
    field: str
    keys: tuple[str, ...]
    value: Value


def thresholds(rule, agency: str, dataset: str) -> list[Threshold]:
    """Every threshold the rule compares with ``agency.dataset``: ``sum_below`` lines (bounded by
    each summed column of this dataset, else by ``sum_below``), ``count_at_most``'s ``max`` (by
    ``count_at_most``) and the comparisons of ``where`` (by their column) that test a value: every
    ordering (< <= > >=) and every ``=`` / ``!=`` with a number or a date (text equality, e.g.
    ``usage = 'residential'``, is a category, not a threshold)."""
    ref = f"{agency}.{dataset}"
    out: list[Threshold] = []
    for c in criteria_touching(rule, agency, dataset):
        if c.type == "sum_below":
            field, value = ("per_member", c.per_member) if c.per_member is not None else ("limit", c.limit)
            for s in c.sources:
                if s.startswith(ref + "."):
                    out.append(Threshold(c.name, field, (s.split(".")[2], "sum_below"), value))
        elif c.type == "count_at_most":
            out.append(Threshold(c.name, "max", ("count_at_most",), c.max))
        if c.where is not None:
            for cmp in c.where.comparisons():
                # An equality with a number or a date is a threshold too: ``x = v`` (or up to 64
                # of them joined by ``or``) tests a value as sharply as ``<`` does.
                if cmp.op in ORDERING_OPS or cmp.is_number or _DATE_LITERAL.match(str(cmp.value)):
                    out.append(Threshold(c.name, "where", (cmp.column,), cmp.value))
    return out


def compared_columns(rule, agency: str, dataset: str, key_column: str) -> list[tuple[str, str]]:
    """(criterion, column) for every comparison the rule makes on ``agency.dataset``, in rule
    order: its summed columns, its ``where`` columns, and the key column for a count."""
    ref = f"{agency}.{dataset}"
    out: list[tuple[str, str]] = []
    for c in criteria_touching(rule, agency, dataset):
        cols: set[str] = set(c.where.columns()) if c.where is not None else set()
        if c.type == "sum_below":
            cols |= {s.split(".")[2] for s in c.sources if s.startswith(ref + ".")}
        else:
            cols.add(key_column)
        out.extend((c.name, col) for col in sorted(cols))
    return out
