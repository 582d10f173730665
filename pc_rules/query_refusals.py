"""Refusals of the query language (:mod:`pc_rules.query`): one line naming each construct."""
from __future__ import annotations

from sqlglot import exp

from pc_common.errors import InvalidInput
from pc_rules.expr import COLUMN_NAME_RE

# Names of refused constructs, by sqlglot node class name (fallback: the class name in capitals).
NAMES = {
    "Like": "LIKE", "ILike": "ILIKE", "In": "IN", "Between": "BETWEEN", "Is": "IS NULL tests",
    "Null": "NULL", "Case": "CASE", "If": "IF", "Cast": "CAST", "TryCast": "CAST", "Anonymous": "the function",
    "Window": "window functions", "Union": "UNION", "Intersect": "INTERSECT", "Except": "EXCEPT",
    "Subquery": "subqueries other than EXISTS", "Select": "subqueries other than EXISTS",
    "Max": "MAX", "Min": "MIN", "Stddev": "STDDEV", "Variance": "VARIANCE", "Add": "arithmetic",
    "Sub": "arithmetic", "Mul": "arithmetic", "Div": "arithmetic", "Mod": "arithmetic", "Xor": "XOR",
    "Not": "NOT (other than NOT EXISTS)", "Star": "SELECT *", "Placeholder": "parameters",
    "Parameter": "parameters", "Boolean": "boolean literals", "Concat": "string concatenation",
    "DPipe": "string concatenation", "RegexpLike": "regular expressions", "Distinct": "DISTINCT",
}

SELECT_CLAUSES = {
    "with": "WITH (common table expressions) is not supported",
    "distinct": "SELECT DISTINCT is not supported (use COUNT(DISTINCT a.key))",
    "order": "ORDER BY is not supported: results come sorted by the group columns",
    "limit": "LIMIT is not supported: every released group is returned",
    "offset": "OFFSET is not supported",
    "having": "HAVING is not supported: small groups are suppressed by the providers' minimum group size",
    "qualify": "QUALIFY is not supported", "windows": "window functions are not supported",
    "laterals": "LATERAL is not supported", "into": "SELECT INTO is not supported",
    "sample": "TABLESAMPLE is not supported", "locks": "locking clauses are not supported",
    "connect": "CONNECT BY is not supported", "prewhere": "PREWHERE is not supported",
    "cluster": "CLUSTER BY is not supported", "distribute": "DISTRIBUTE BY is not supported",
    "sort": "SORT BY is not supported", "pivots": "PIVOT is not supported", "settings": "SETTINGS is not supported",
    "format": "FORMAT is not supported", "options": "query options are not supported",
    "kind": "SELECT AS STRUCT/VALUE is not supported", "hint": "query hints are not supported",
    "exclude": "SELECT * EXCLUDE is not supported", "operation_modifiers": "query modifiers are not supported",
    "match": "MATCH_RECOGNIZE is not supported",
}
ALLOWED_SELECT = ("expressions", "from", "from_", "joins", "where", "group")


def fail(msg: str) -> InvalidInput:
    return InvalidInput(f"query: {msg}")


def name_of(node: exp.Expression) -> str:
    cls = type(node).__name__
    if cls == "Anonymous":
        return f"the function {str(node.name)[:32].upper()}()"
    if isinstance(node, exp.Func) and cls not in NAMES:
        return f"the function {cls.upper()}()"
    return NAMES.get(cls, cls.upper())


def unsupported(node: exp.Expression) -> InvalidInput:
    name = name_of(node)
    verb = "are" if name.endswith("s") and not name.startswith("the function") else "is"
    return fail(f"{name} {verb} not supported")


def literal(node: exp.Expression) -> str:
    """A literal in the where grammar's text form."""
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return "-" + literal(node.this)
    if isinstance(node, exp.Literal):
        text = str(node.this)
        if node.is_string:
            return "'" + text.replace("'", "''") + "'"
        return text
    if isinstance(node, exp.Paren):
        return literal(node.this)
    raise unsupported(node)


def header(item: exp.Expression, inner: exp.Expression) -> str:
    """A SELECT item's name in the results file: the alias, the bare column, or the expression."""
    if isinstance(item, exp.Alias):
        name = item.args["alias"].name if isinstance(item.args["alias"], exp.Expression) else str(item.args["alias"])
        if not COLUMN_NAME_RE.match(name or ""):
            raise fail(f"alias '{str(name)[:40]}' is not a valid name (letters, digits and _)")
        return name
    if isinstance(inner, exp.Column):
        return inner.name
    return "".join(inner.sql().lower().split())
