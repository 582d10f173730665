"""The SQL subset of federated queries (``pc query``): parse with sqlglot, validate to a plan.

Longer than usual because every refused construct is named here, next to the grammar it
departs from (the messages themselves are in :mod:`pc_rules.query_refusals`).

Accepted (standard SQL semantics on the joined rows)::

    SELECT a.district AS district, COUNT(*) AS n, SUM(w.monthly_income) AS total,
           AVG(w.monthly_income) AS mean
    FROM civil_affairs.recipients a
    JOIN tax.wages w ON a.id_number = w.id_number
    WHERE a.age >= 60 AND w.employer <> 'self'
      AND NOT EXISTS (SELECT 1 FROM public_security.vehicles v
                      WHERE v.id_number = a.id_number AND v.vehicle_type <> 'motorcycle')
    GROUP BY a.district

* FROM one dataset of the requester's own agency (``agency.dataset [alias]``);
* at most one provider dataset in an inner ``JOIN … ON`` an equality of key columns;
* provider datasets in ``EXISTS`` / ``NOT EXISTS (SELECT … FROM agency.dataset x WHERE
  x.key = a.key AND …)`` semi-joins — of the JOIN's agency or of further provider agencies;
* aggregates ``COUNT(*)``, ``COUNT(DISTINCT a.<key>)``, ``SUM(col)``, ``AVG(col)`` of columns of the
  JOINed dataset;
* ``GROUP BY`` requester columns and at most one column of the JOINed dataset whose metadata
  declares its categories (every selected column must be a group column);
* ``WHERE`` conjuncts, each on one table, in the ``where`` grammar's operators
  (:mod:`pc_rules.where`): each is evaluated only by that table's owner.

Everything else is refused with one line naming the construct (``InvalidInput``). The text
is parsed, never executed: nothing of it reaches a database. Every column must be qualified
by its table's alias (``a.age``), so a name never resolves by guesswork.

:func:`parse_query` is syntax only (no catalog); ``pc_rules.query_catalog.validate_query``
checks a plan against the published catalog (datasets, key columns, types). Both sides re-parse the SQL
text signed in the job spec, so the plan is never taken from another party.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from pc_common.errors import InvalidInput
from pc_rules.expr import COLUMN_NAME_RE, Expr
from pc_rules.query_refusals import ALLOWED_SELECT as _ALLOWED_SELECT
from pc_rules.query_refusals import SELECT_CLAUSES as _SELECT_CLAUSES
from pc_rules.query_refusals import fail as _fail
from pc_rules.query_refusals import header as _header
from pc_rules.query_refusals import literal as _literal
from pc_rules.query_refusals import name_of as _name
from pc_rules.query_refusals import unsupported as _unsupported
from pc_rules.where import parse_where

__all__ = ["AGGREGATES", "MAX_PROVIDER_AGENCIES", "MAX_SQL_LENGTH", "Aggregate", "QueryPlan", "SemiJoin", "TableRef", "parse_query"]

MAX_SQL_LENGTH = 8000
#: Provider agencies of one query: the main one (the JOIN's, else the first semi-join's) and
#: further ones with semi-joins, each of which selects the main one's Paillier answers by its own
#: 0/1 test, re-randomised (docs/query.md, "Several provider agencies"). Each adds one
#: re-randomisation per slot and pack.
MAX_PROVIDER_AGENCIES = 3
AGGREGATES = ("count", "count_distinct", "sum", "avg")

_OPS = {exp.EQ: "=", exp.NEQ: "!=", exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">="}
_FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class TableRef:
    agency: str
    dataset: str
    alias: str

    @property
    def ref(self) -> str:
        return f"{self.agency}.{self.dataset}"


@dataclass(frozen=True)
class SemiJoin:
    """A provider dataset joined (``JOIN``) or semi-joined (``EXISTS`` / ``NOT EXISTS``)."""

    table: TableRef
    key: str                        # the provider's column in the equality
    outer_key: str                  # the requester's column in the equality
    kind: str                       # "join" | "exists" | "not_exists"
    where: Expr | None = None       # the provider's own conditions (evaluated only there)

    def to_dict(self) -> dict:
        return {"agency": self.table.agency, "dataset": self.table.dataset, "alias": self.table.alias,
                "key": self.key, "outer_key": self.outer_key, "kind": self.kind,
                "where": self.where.to_dict() if self.where is not None else None}


@dataclass(frozen=True)
class Aggregate:
    """One item of the SELECT list: a group column or an aggregate."""

    func: str                       # "group" | "count" | "count_distinct" | "sum" | "avg"
    name: str                       # its header in the results file
    alias: str = ""                 # table alias of the column ("" for COUNT(*))
    column: str = ""


@dataclass(frozen=True)
class QueryPlan:
    source: TableRef                                # the requester's dataset
    select: tuple[Aggregate, ...]
    group_by: tuple[str, ...]                       # requester columns
    where: Expr | None                              # the requester's own conditions
    join: SemiJoin | None = None
    semijoins: tuple[SemiJoin, ...] = ()
    sql: str = field(default="", compare=False)
    #: A column of the JOINed dataset in GROUP BY (declared categories, one-hot under encryption),
    #: and its position among the GROUP BY columns ("" / 0: none).
    provider_group: str = ""
    provider_group_at: int = 0

    @property
    def requester(self) -> str:
        return self.source.agency

    def providers_sources(self) -> tuple[SemiJoin, ...]:
        return ((self.join,) if self.join else ()) + self.semijoins

    def providers(self) -> list[str]:
        return list(dict.fromkeys(s.table.agency for s in self.providers_sources()))

    def main_provider(self) -> str:
        """The agency that answers the aggregates: the JOIN's, else the first semi-join's."""
        return self.join.table.agency if self.join else self.providers()[0]

    def indicator_providers(self) -> list[str]:
        """Further agencies (semi-joins only): each keeps the main provider's encrypted answer of a
        slot where its own semi-joins hold and replaces it by an encryption of zero elsewhere."""
        main = self.main_provider()
        return [a for a in self.providers() if a != main]

    def sources_of(self, agency: str) -> tuple[SemiJoin, ...]:
        """The JOIN / semi-joins that ``agency`` evaluates (its own datasets only)."""
        return tuple(s for s in self.providers_sources() if s.table.agency == agency)

    def noise_parties(self) -> int:
        """DP noise shares per group and vector: the main provider's and the coordinator's (an
        indicator provider's answers are 0/1 per subject and it holds no clip bounds of the sums)."""
        return 2

    def aggregates(self) -> tuple[Aggregate, ...]:
        return tuple(a for a in self.select if a.func != "group")

    def sum_columns(self) -> tuple[str, ...]:
        """Provider columns (of the JOIN) that SUM or AVG read, each once, in SELECT order."""
        return tuple(dict.fromkeys(a.column for a in self.select if a.func in ("sum", "avg")))

    def vectors(self) -> tuple[str, ...]:
        """The aggregate vectors, in order: distinct subjects, joined rows, one sum per column (``sum:col``)."""
        return ("subjects", "rows") + tuple(f"sum:{c}" for c in self.sum_columns())

    def he_scheme(self) -> str:
        """``bfv`` (batched, fast) unless the answer needs a product of two agencies' data — a
        further provider agency's test times the main provider's answers — which runs under
        ``paillier``, whose re-randomisation hides how a ciphertext was made."""
        return "paillier" if self.indicator_providers() else "bfv"

    def table(self, alias: str) -> TableRef:
        for t in (self.source, *(s.table for s in self.providers_sources())):
            if t.alias == alias:
                return t
        raise KeyError(alias)


# ----- parsing -------------------------------------------------------------------------------------------
def _ident(node: Any, what: str) -> str:
    text = node.name if isinstance(node, exp.Expression) else str(node or "")
    if not COLUMN_NAME_RE.match(text or ""):
        raise _fail(f"{what} '{str(text)[:40]}' is not a valid name (letters, digits and _)")
    return text


def _table(node: exp.Expression, where: str) -> TableRef:
    if isinstance(node, (exp.Subquery, exp.Select)):
        raise _fail("subqueries other than EXISTS are not supported")
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise _fail(f"{where} must name a dataset as agency.dataset ({_name(node)} is not supported)")
    if node.args.get("catalog"):
        raise _fail(f"{where}: name a dataset as agency.dataset (three-part names are not supported)")
    for key in ("joins", "pivots", "laterals", "sample", "hints", "version", "when", "only", "partition"):
        if node.args.get(key):
            raise _fail(f"{where}: table modifiers are not supported")
    db = node.args.get("db")
    if db is None:
        raise _fail(f"{where} must name a dataset as agency.dataset (the agency is missing)")
    agency = _ident(db, "agency")
    dataset = _ident(node.this, "dataset")
    alias_node = node.args.get("alias")
    if alias_node is not None and alias_node.args.get("columns"):
        raise _fail("column aliases on a table are not supported")
    alias = _ident(alias_node.this, "alias") if alias_node is not None and alias_node.this else dataset
    return TableRef(agency, dataset, alias)


def _column(node: exp.Expression, aliases: Mapping[str, TableRef]) -> tuple[str, str]:
    """(table alias, column) of a qualified column."""
    if not isinstance(node, exp.Column):
        raise _unsupported(node)
    if node.args.get("db") or node.args.get("catalog"):
        raise _fail("columns are written alias.column")
    if isinstance(node.this, exp.Star):
        raise _fail("SELECT * is not supported")
    table = node.args.get("table")
    col = _ident(node.this, "column")
    if table is None:
        raise _fail(f"column '{col}' must be qualified by its table's alias (e.g. a.{col})")
    alias = _ident(table, "table alias")
    if alias not in aliases:
        raise _fail(f"unknown table alias '{alias}' in {alias}.{col}")
    return alias, col


def _condition_text(node: exp.Expression, aliases: Mapping[str, TableRef], used: set[str], depth: int = 0) -> str:
    if depth > 16:
        raise _fail("conditions are nested too deeply")
    if isinstance(node, exp.Paren):
        return "(" + _condition_text(node.this, aliases, used, depth + 1) + ")"
    if isinstance(node, exp.And):
        return (_condition_text(node.this, aliases, used, depth + 1) + " and "
                + _condition_text(node.expression, aliases, used, depth + 1))
    if isinstance(node, exp.Or):
        return ("(" + _condition_text(node.this, aliases, used, depth + 1) + " or "
                + _condition_text(node.expression, aliases, used, depth + 1) + ")")
    if isinstance(node, (exp.Exists,)) or (isinstance(node, exp.Not) and isinstance(node.this, exp.Exists)):
        raise _fail("EXISTS / NOT EXISTS must be a top-level conjunct of WHERE (not inside OR or parentheses)")
    op = _OPS.get(type(node))
    if op is None:
        raise _unsupported(node)
    left, right = node.this, node.expression
    if isinstance(left, exp.Column) and isinstance(right, exp.Column):
        raise _fail("comparisons between two columns are not supported (join only ON key columns)")
    if isinstance(right, exp.Column):
        left, right, op = right, left, _FLIP[op]
    alias, col = _column(left, aliases)
    used.add(alias)
    return f"{col} {op} {_literal(right)}"


def _where_of(nodes: list[exp.Expression], aliases: Mapping[str, TableRef], what: str) -> dict[str, Expr]:
    """Conjuncts grouped by the one table each reads, as where expressions."""
    texts: dict[str, list[str]] = {}
    for n in nodes:
        used: set[str] = set()
        text = _condition_text(n, aliases, used)
        if len(used) != 1:
            raise _fail(f"each condition of {what} must read one table only (it is evaluated by that table's owner)")
        texts.setdefault(used.pop(), []).append(text)
    out = {}
    for alias, parts in texts.items():
        text = " and ".join(f"({t})" if " or " in t else t for t in parts)
        try:
            out[alias] = parse_where(text)
        except InvalidInput as e:
            raise _fail(f"condition on '{alias}': {str(e).removeprefix('where: ')}") from None
    return out


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _key_equality(node: exp.Expression, inner: str, outer: str, aliases: Mapping[str, TableRef],
                  what: str) -> tuple[str, str] | None:
    """(inner column, outer column) if ``node`` is ``inner.k = outer.k'``; else None."""
    if not isinstance(node, exp.EQ) or not (isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Column)):
        return None
    a1, c1 = _column(node.this, aliases)
    a2, c2 = _column(node.expression, aliases)
    if {a1, a2} != {inner, outer}:
        raise _fail(f"{what} must equate the provider's key column with the requester's")
    return (c1, c2) if a1 == inner else (c2, c1)


def _check_select_clauses(sel: exp.Select, where: str) -> None:
    for key, value in sel.args.items():
        if key in _ALLOWED_SELECT or value in (None, [], False):
            continue
        raise _fail(_SELECT_CLAUSES.get(key, f"{key.upper()} is not supported") + ("" if not where else f" ({where})"))


def _exists(node: exp.Expression, negated: bool, outer: TableRef, aliases: dict[str, TableRef]) -> SemiJoin:
    sub = node.this
    if isinstance(sub, exp.Subquery):
        sub = sub.this
    if not isinstance(sub, exp.Select):
        raise _fail("EXISTS needs a SELECT")
    _check_select_clauses(sub, "in EXISTS")
    if sub.args.get("group"):
        raise _fail("GROUP BY inside EXISTS is not supported")
    if sub.args.get("joins"):
        raise _fail("JOIN inside EXISTS is not supported: one dataset per EXISTS")
    frm = sub.args.get("from_") or sub.args.get("from")
    if frm is None:
        raise _fail("EXISTS needs FROM agency.dataset")
    table = _table(frm.this, "EXISTS")
    if table.alias in aliases:
        raise _fail(f"table alias '{table.alias}' is used twice")
    for e in sub.expressions:
        if isinstance(e, exp.Subquery) or any(isinstance(x, (exp.Select, exp.Subquery)) for x in e.walk()):
            raise _fail("subqueries other than EXISTS are not supported")
    scope = {**aliases, table.alias: table}
    keys, rest = None, []
    for c in _conjuncts(sub.args["where"].this if sub.args.get("where") else None):
        k = _key_equality(c, table.alias, outer.alias, scope, "EXISTS")
        if k is not None:
            if keys is not None:
                raise _fail("EXISTS correlates on one key equality only")
            keys = k
        else:
            rest.append(c)
    if keys is None:
        raise _fail(f"EXISTS must correlate on the key: WHERE {table.alias}.key = {outer.alias}.key")
    local = _where_of(rest, {table.alias: table}, "EXISTS") if rest else {}
    aliases[table.alias] = table
    return SemiJoin(table, keys[0], keys[1], "not_exists" if negated else "exists", local.get(table.alias))


def parse_query(sql: str) -> QueryPlan:
    """Parse and check the SQL subset (no catalog); ``InvalidInput`` names the first refused construct."""
    if not isinstance(sql, str) or not sql.strip():
        raise _fail("the query is empty")
    if len(sql) > MAX_SQL_LENGTH:
        raise _fail(f"the query is longer than {MAX_SQL_LENGTH} characters")
    if "\x00" in sql:
        raise _fail("the query contains a NUL character")
    try:
        statements = [s for s in sqlglot.parse(sql) if s is not None]
    except (ParseError, TokenError) as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise _fail(f"not valid SQL ({first[:120]})") from None
    except RecursionError:
        raise _fail("the query is nested too deeply") from None
    if len(statements) != 1:
        raise _fail("one SELECT statement only (no ';'-separated statements)")
    sel = statements[0]
    if isinstance(sel, (exp.Union, exp.Intersect, exp.Except)):
        raise _unsupported(sel)
    if not isinstance(sel, exp.Select):
        raise _fail(f"only SELECT queries are supported, not {type(sel).__name__.upper()}")
    _check_select_clauses(sel, "")
    frm = sel.args.get("from_") or sel.args.get("from")
    if frm is None:
        raise _fail("FROM agency.dataset is missing")
    source = _table(frm.this, "FROM")
    aliases: dict[str, TableRef] = {source.alias: source}

    join = None
    joins = sel.args.get("joins") or []
    if len(joins) > 1:
        raise _fail("at most one JOIN (further provider datasets as EXISTS / NOT EXISTS)")
    for j in joins:
        side, kind = (j.args.get("side") or "").upper(), (j.args.get("kind") or "").upper()
        if side or kind not in ("", "INNER"):
            raise _fail(f"{(side + ' ' + kind).strip()} JOIN is not supported: inner JOIN only")
        if j.args.get("using"):
            raise _fail("JOIN … USING is not supported: write ON a.key = b.key")
        table = _table(j.this, "JOIN")
        if table.alias in aliases:
            raise _fail(f"table alias '{table.alias}' is used twice")
        on = j.args.get("on")
        if on is None:
            raise _fail("JOIN needs ON a.key = b.key (cross joins are not supported)")
        scope = {**aliases, table.alias: table}
        keys = _key_equality(on, table.alias, source.alias, scope, "JOIN … ON")
        if keys is None:
            raise _fail("JOIN … ON must be one equality of key columns (further conditions go in WHERE)")
        aliases[table.alias] = table
        join = SemiJoin(table, keys[0], keys[1], "join")

    semijoins, plain = [], []
    for c in _conjuncts(sel.args["where"].this if sel.args.get("where") else None):
        if isinstance(c, exp.Exists):
            semijoins.append(_exists(c, False, source, aliases))
        elif isinstance(c, exp.Not) and isinstance(c.this, exp.Exists):
            semijoins.append(_exists(c.this, True, source, aliases))
        else:
            if any(isinstance(x, exp.Exists) for x in c.walk()):
                raise _fail("EXISTS / NOT EXISTS must be a top-level conjunct of WHERE (not inside OR or NOT)")
            if any(isinstance(x, (exp.Select, exp.Subquery)) for x in c.walk()):
                raise _fail("subqueries other than EXISTS are not supported")
            plain.append(c)
    conds = _where_of(plain, aliases, "WHERE")
    for alias in conds:
        if alias not in (source.alias, join.table.alias if join else None):
            raise _fail(f"conditions on '{alias}' belong inside its EXISTS")
    if join is not None and join.table.alias in conds:
        join = SemiJoin(join.table, join.key, join.outer_key, "join", conds[join.table.alias])

    group_by: list[str] = []
    provider_group, provider_at = "", 0
    group = sel.args.get("group")
    if group is not None:
        for key in ("grouping_sets", "cube", "rollup", "totals"):
            if group.args.get(key):
                raise _fail(f"GROUP BY {key.upper().replace('_', ' ')} is not supported")
        for g in group.expressions:
            if isinstance(g, exp.Literal):
                raise _fail("GROUP BY positions are not supported: name the columns")
            alias, col = _column(g, aliases)
            if join is not None and alias == join.table.alias and provider_group in ("", col):
                provider_group, provider_at = col, provider_at if provider_group else len(group_by)
                continue
            if alias != source.alias:
                raise _fail(f"GROUP BY {alias}.{col}: group by your own dataset's columns and at most one column of"
                            " the JOINed dataset (with declared categories)")
            if col not in group_by:
                group_by.append(col)

    items: list[Aggregate] = []
    for item in sel.expressions:
        inner = item.this if isinstance(item, exp.Alias) else item
        if any(isinstance(x, (exp.Select, exp.Subquery)) for x in inner.walk()):
            raise _fail("subqueries other than EXISTS are not supported")
        if isinstance(inner, exp.Star):
            raise _fail("SELECT * is not supported: name group columns and aggregates")
        if isinstance(inner, exp.Column):
            alias, col = _column(inner, aliases)
            if provider_group and join is not None and (alias, col) == (join.table.alias, provider_group):
                items.append(Aggregate("group", _header(item, inner), alias, col))
                continue
            if alias != source.alias or col not in group_by:
                raise _fail(f"{alias}.{col} is selected but not in GROUP BY (select group columns and aggregates)")
            items.append(Aggregate("group", _header(item, inner), alias, col))
            continue
        if isinstance(inner, exp.Count):
            arg = inner.this
            if isinstance(arg, exp.Star):
                items.append(Aggregate("count", _header(item, inner)))
                continue
            if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
                alias, col = _column(arg.expressions[0], aliases)
                if alias != source.alias:
                    raise _fail("COUNT(DISTINCT …) counts the requester's key column only")
                items.append(Aggregate("count_distinct", _header(item, inner), alias, col))
                continue
            raise _fail("COUNT takes * or DISTINCT a.key only (COUNT(col) is not supported)")
        if isinstance(inner, (exp.Sum, exp.Avg)):
            func = "sum" if isinstance(inner, exp.Sum) else "avg"
            if isinstance(inner.this, exp.Distinct):
                raise _fail(f"{func.upper()}(DISTINCT …) is not supported")
            if inner.args.get("expressions"):
                raise _fail(f"{func.upper()} takes one column")
            alias, col = _column(inner.this, aliases)
            if alias == source.alias:
                # Σ over the matched rows of values the requester chooses is any linear function of
                # the providers' per-subject matches it likes (weights 1, 2, 4, … spell them out); no
                # party can check encrypted weights, so neither k nor DP would protect the providers.
                raise _fail(f"{func.upper()}({alias}.{col}): sums of your own columns are not supported — weighted"
                            " by values only you know, a sum could spell out each subject's match (docs/query.md)")
            if join is None or alias != join.table.alias:
                raise _fail(f"{func.upper()}({alias}.{col}): only columns of the JOINed provider dataset can be"
                            " summed (an EXISTS dataset only tests)")
            items.append(Aggregate(func, _header(item, inner), alias, col))
            continue
        raise _unsupported(inner)
    if not any(a.func != "group" for a in items):
        raise _fail("select at least one aggregate (COUNT, SUM or AVG)")
    names = [a.name for a in items]
    if len(set(names)) != len(names):
        raise _fail("two SELECT items have the same name; give them distinct aliases")
    if join is None and not semijoins:
        raise _fail("the query reads only your own dataset; run it locally, not through the federation")
    plan = QueryPlan(source, tuple(items), tuple(group_by), conds.get(source.alias), join, tuple(semijoins), sql=sql,
                     provider_group=provider_group, provider_group_at=provider_at)
    if len(plan.providers()) > MAX_PROVIDER_AGENCIES:
        raise _fail(f"datasets of at most {MAX_PROVIDER_AGENCIES} provider agencies per query (each further agency"
                    " re-encrypts every slot of the answer)")
    if plan.requester in plan.providers():
        raise _fail("a JOIN or EXISTS reads your own agency's data; join it locally instead")
    return plan
