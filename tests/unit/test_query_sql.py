"""The SQL subset of federated queries (pc_rules.query): accepted shapes, refused constructs."""
from __future__ import annotations

import pytest

from pc_common.errors import InvalidInput
from pc_rules.query import parse_query
from pc_rules.query_catalog import query_column_uses, validate_query
from pc_rules.where import parse_where

BASE = ("SELECT a.district AS district, COUNT(*) AS n, SUM(w.monthly_income) AS total, "
        "AVG(w.monthly_income) AS mean FROM civil_affairs.recipients a "
        "JOIN tax.wages w ON a.id_number = w.id_number "
        "WHERE a.age >= 60 AND w.employer <> 'self' GROUP BY a.district")

CATALOG = {
    "civil_affairs.recipients": {"key_column": "id_number",
                                 "columns": {"district": "text", "age": "integer", "street": "text"}},
    "tax.wages": {"key_column": "id_number", "columns": {"monthly_income": "decimal", "employer": "text"}},
    "tax.companies": {"key_column": "id_number", "columns": {"status": "text"}},
    "public_security.vehicles": {"key_column": "id_number", "columns": {"vehicle_type": "text"}},
}


def test_issue_example_plan():
    p = parse_query(BASE)
    assert p.source.ref == "civil_affairs.recipients" and p.source.alias == "a"
    assert p.join is not None and p.join.table.ref == "tax.wages" and p.join.key == "id_number"
    assert p.join.where == parse_where("employer != 'self'")
    assert p.where == parse_where("age >= 60")
    assert p.group_by == ("district",)
    assert [(a.func, a.name) for a in p.select] == [("group", "district"), ("count", "n"), ("sum", "total"),
                                                    ("avg", "mean")]
    assert p.providers() == ["tax"] and p.sum_columns() == ("monthly_income",)
    validate_query(p, CATALOG, "civil_affairs")
    assert query_column_uses(p, "tax") == {"wages": {"employer": "predicate", "monthly_income": "aggregate"}}
    assert query_column_uses(p, "public_security") == {}


def test_exists_and_not_exists_and_headers():
    p = parse_query("SELECT a.street, COUNT(*), COUNT(DISTINCT a.id_number) FROM civil_affairs.recipients a "
                    "WHERE EXISTS (SELECT 1 FROM tax.companies c WHERE c.id_number = a.id_number AND "
                    "c.status = 'active') AND NOT EXISTS (SELECT * FROM tax.wages x WHERE a.id_number = x.id_number)"
                    " GROUP BY a.street")
    assert [a.name for a in p.select] == ["street", "count(*)", "count(distincta.id_number)"]
    assert [(s.table.ref, s.kind) for s in p.semijoins] == [("tax.companies", "exists"), ("tax.wages", "not_exists")]
    assert p.semijoins[0].where == parse_where("status = 'active'") and p.semijoins[1].where is None
    validate_query(p, CATALOG, "civil_affairs")


def test_or_within_one_table_and_flipped_literal():
    p = parse_query("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON w.id_number = a.id_number "
                    "WHERE (a.age < 30 OR a.age > 60) AND 1000 <= w.monthly_income")
    assert p.where == parse_where("age < 30 or age > 60")
    assert p.join.where == parse_where("monthly_income >= 1000")
    assert p.group_by == ()


REFUSED = [
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number ORDER BY a.age",
     "ORDER BY is not supported: results come sorted by the group columns"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a WHERE a.id_number IN (SELECT w.id_number FROM tax.wages w)",
     "subqueries other than EXISTS are not supported"),
    ("SELECT COUNT(*) FROM (SELECT * FROM civil_affairs.recipients) a", "subqueries other than EXISTS"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number; DROP TABLE x",
     "one SELECT statement only"),
    ("DROP TABLE tax.wages", "only SELECT queries are supported"),
    ("DELETE FROM tax.wages", "only SELECT queries are supported"),
    ("INSERT INTO tax.wages VALUES (1)", "only SELECT queries are supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a UNION SELECT COUNT(*) FROM tax.wages w", "UNION"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a LEFT JOIN tax.wages w ON a.id_number = w.id_number",
     "LEFT JOIN is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a CROSS JOIN tax.wages w", "JOIN is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "JOIN tax.companies c ON c.id_number = a.id_number", "at most one JOIN"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w USING (id_number)", "USING"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.age > w.monthly_income",
     "one equality of key columns"),
    ("SELECT MAX(w.monthly_income) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number",
     "MAX is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE w.employer LIKE '%x%'", "LIKE is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.age BETWEEN 1 AND 5", "BETWEEN is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.district IS NULL", "IS NULL"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.age = 1 OR w.employer = 'x'", "must read one table only"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.age = w.monthly_income", "between two columns"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE lower(w.employer) = 'x'", "LOWER() is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "GROUP BY a.district HAVING COUNT(*) > 1", "HAVING is not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number LIMIT 5",
     "LIMIT is not supported"),
    ("WITH t AS (SELECT 1) SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w "
     "ON a.id_number = w.id_number", "WITH"),
    ("SELECT DISTINCT a.district FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number",
     "SELECT DISTINCT"),
    ("SELECT * FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number", "SELECT *"),
    ("SELECT a.age, COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "GROUP BY a.district", "not in GROUP BY"),
    ("SELECT a.district, COUNT(*) FROM civil_affairs.recipients a WHERE EXISTS (SELECT 1 FROM public_security.vehicles"
     " v WHERE v.id_number = a.id_number) GROUP BY v.vehicle_type", "at most one column of the JOINed dataset"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "GROUP BY w.employer, w.monthly_income", "at most one column of the JOINed dataset"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number GROUP BY 1",
     "GROUP BY positions"),
    ("SELECT COUNT(age) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number",
     "COUNT takes * or DISTINCT"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number WHERE age > 1",
     "must be qualified"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE z.age > 1", "unknown table alias"),
    ("SELECT COUNT(w.employer) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number",
     "COUNT takes * or DISTINCT"),
    ("SELECT SUM(a.age) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number",
     "sums of your own columns are not supported"),
    ("SELECT AVG(a.age) FROM civil_affairs.recipients a WHERE EXISTS (SELECT 1 FROM tax.wages w WHERE "
     "w.id_number = a.id_number)", "could spell out each subject's match"),
    ("SELECT SUM(v.seats) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number WHERE "
     "EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = a.id_number)",
     "an EXISTS dataset only tests"),
    ("SELECT SUM(w.monthly_income * 2) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number",
     "arithmetic"),
    ("SELECT COUNT(*) FROM recipients a JOIN tax.wages w ON a.id_number = w.id_number", "agency is missing"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a", "only your own dataset"),
    ("SELECT a.district FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "GROUP BY a.district", "at least one aggregate"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a WHERE EXISTS (SELECT 1 FROM tax.wages w WHERE w.age > 1)",
     "must correlate on the key"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a WHERE a.age > 1 OR EXISTS "
     "(SELECT 1 FROM tax.wages w WHERE w.id_number = a.id_number)", "top-level conjunct"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a WHERE EXISTS (SELECT 1 FROM tax.wages w "
     "JOIN tax.companies c ON c.id_number = w.id_number WHERE w.id_number = a.id_number)", "JOIN inside EXISTS"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number WHERE "
     "EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = a.id_number)", None),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number WHERE "
     "EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = a.id_number) AND NOT EXISTS "
     "(SELECT 1 FROM housing.properties p WHERE p.id_number = a.id_number)", None),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number WHERE "
     "EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = a.id_number) AND NOT EXISTS "
     "(SELECT 1 FROM housing.properties p WHERE p.id_number = a.id_number) AND EXISTS "
     "(SELECT 1 FROM hrss.pensions s WHERE s.id_number = a.id_number)", "at most 3 provider agencies"),
    ("SELECT v.vehicle_type, COUNT(*) FROM civil_affairs.recipients a JOIN public_security.vehicles v ON "
     "a.id_number = v.id_number WHERE EXISTS (SELECT 1 FROM tax.wages w WHERE w.id_number = a.id_number) "
     "GROUP BY v.vehicle_type", None),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN civil_affairs.other o ON a.id_number = o.id_number",
     "your own agency"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages a ON a.id_number = a.id_number", "used twice"),
    ("SELECT COUNT(*) AS n, SUM(w.monthly_income) AS n FROM civil_affairs.recipients a JOIN tax.wages w "
     "ON a.id_number = w.id_number", "same name"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.district = 'x' OR 1 = 1", "not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.district = $1", "not supported"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.district = 'x' -- ' OR 1=1", None),       # a comment is only a comment: accepted, never executed
    ("SELEC COUNT(*) FROM x", "not valid SQL"),
    ("SELECT COUNT(* FROM civil_affairs.recipients a", "not valid SQL"),
    ("", "empty"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number WHERE " +
     " AND ".join(["a.age > 1"] * 2000), "longer than"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number \x00", "NUL"),
    ("SELECT COUNT(*) FROM civil_affairs.recipients a JOIN tax.wages w ON a.id_number = w.id_number "
     "WHERE a.\"select\" = 'x'", "reserved word"),
]


@pytest.mark.parametrize("sql,message", REFUSED)
def test_refused_with_one_line_naming_the_construct(sql, message):
    if message is None:
        parse_query(sql)
        return
    with pytest.raises(InvalidInput) as exc:
        parse_query(sql)
    text = str(exc.value)
    assert "\n" not in text and text.startswith("query: ")
    assert message in text


CATALOG_REFUSED = [
    (BASE.replace("civil_affairs.recipients", "civil_affairs.nothing"), "has no dataset 'nothing'"),
    (BASE.replace("tax.wages", "nowhere.wages"), "unknown agency 'nowhere'"),
    (BASE.replace("SUM(w.monthly_income)", "SUM(w.employer)"), "only integer or decimal"),
    (BASE.replace("SUM(w.monthly_income)", "SUM(w.id_number)"), "key column and cannot be summed"),
    (BASE.replace("a.age >= 60", "a.age >= 'x'"), "civil_affairs.recipients"),
    (BASE.replace("w.employer <> 'self'", "w.nonexistent <> 'self'"), "has no column 'nonexistent'"),
    (BASE.replace("GROUP BY a.district", "GROUP BY a.district, a.ghost").replace(
        "SELECT a.district AS district", "SELECT a.district AS district, a.ghost"), "has no column 'ghost'"),
    (BASE.replace("ON a.id_number = w.id_number", "ON a.id_number = w.employer"), "not the key column"),
]


@pytest.mark.parametrize("sql,message", CATALOG_REFUSED)
def test_refused_against_the_catalog(sql, message):
    with pytest.raises(InvalidInput) as exc:
        validate_query(parse_query(sql), CATALOG, "civil_affairs")
    assert message in str(exc.value)


def test_provider_table_as_from_is_refused():
    sql = ("SELECT COUNT(*) FROM tax.wages w JOIN civil_affairs.recipients a ON a.id_number = w.id_number")
    with pytest.raises(InvalidInput, match="FROM must be a dataset of your own agency"):
        validate_query(parse_query(sql), CATALOG, "civil_affairs")


def test_query_grants_and_min_group_size_round_trip_through_the_policy_file():
    from pc_client.sandbox import query_grants

    from pc_node.admin import grants_toml
    from pc_node.policy import parse_policy
    grants = query_grants("tax", [BASE], {})
    assert len(grants) == 1 and grants[0].min_group_size == 5
    g = parse_policy(grants_toml(grants))[0]
    assert g.columns == {"id_number": "join_key", "employer": "predicate", "monthly_income": "aggregate"}
    assert g.requester == "civil_affairs" and g.min_group_size == 5
    g7 = parse_policy(grants_toml([type(g)(**{**g.__dict__, "min_group_size": 7})]))[0]
    assert g7.min_group_size == 7
    with pytest.raises(InvalidInput, match="min_group_size"):
        parse_policy(grants_toml(grants).replace("[grants.columns]", "min_group_size = 0\n[grants.columns]"))
    assert query_grants("public_security", [BASE], {}) == []


def test_sandbox_up_grants_the_queries_of_dir_queries(tmp_path):
    from pc_client.sandbox import Sandbox
    from pc_devkit.synth_city import generate_city
    generate_city(tmp_path, households=5, seed=1)
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "wages.sql").write_text(
        "SELECT a.district, SUM(w.monthly_income) AS total FROM civil_affairs.applicants a "
        "JOIN tax.wages w ON a.id_number = w.id_number GROUP BY a.district\n", encoding="utf-8")
    grants = [g for g in Sandbox(tmp_path).grants("tax", ["civil_affairs", "tax"], []) if g.requester == "civil_affairs"
              and g.columns.get("monthly_income") == "aggregate"]
    assert len(grants) == 1 and grants[0].dataset == "wages" and grants[0].min_group_size == 5
