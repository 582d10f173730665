"""The policy file's comparison fields (rules pinned by digest, threshold bounds, comparisons per
column, evaluations per subject) and what ``Policy.authorise`` says when it refuses."""
from __future__ import annotations

from decimal import Decimal

import pytest

from pc_common.errors import InvalidInput, PermissionDenied
from pc_node import admin
from pc_node.policy import DEFAULT_EVALUATIONS, Policy, parse_policy
from pc_rules.rules import parse_rule

HEAD = ('id = "home"\ntitle = "t"\npurpose = "p.q"\nrequester = "civil_affairs"\nsubject_column = "id_number"\n\n')
HOME = ('[[criteria]]\nname = "one_home"\ntype = "count_at_most"\nsource = "housing.properties"\n'
        'where = "usage = \'residential\' and area_m2 > 20"\nmax = 1\n')
SUM = ('[[criteria]]\nname = "small_area"\ntype = "sum_below"\nsource = "housing.properties.area_m2"\n'
       'limit = 300\n')
USES = {"id_number": "join_key", "usage": "predicate"}


def grant(extra: str = "", columns: str = 'usage = "predicate"\narea_m2 = "aggregate"') -> str:
    return ('[[grants]]\ndataset = "properties"\nrequester = "civil_affairs"\npurposes = ["p.q"]\n'
            f'{extra}\n[grants.columns]\nid_number = "join_key"\n{columns}\n')


def pin(rule, agency: str = "housing") -> str:
    return f'rules = [{{ id = "{rule.id}", digest = "{rule.criteria_digest(agency)}" }}]'


def policy(tmp_path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return Policy(path)


def authorise(p: Policy, rule, uses=None):
    return p.authorise("properties", "id_number", "civil_affairs", "p.q", uses or {**USES, "area_m2": "predicate"},
                       rule=rule, agency="housing")


# ----- format -------------------------------------------------------------------------------------------------
def test_parse_comparison_fields_both_toml_forms():
    r = parse_rule(HEAD + HOME)
    digest = r.criteria_digest("housing")
    inline, = parse_policy(grant(pin(r) + '\nthresholds = { area_m2 = { min = 0, max = 500.5 }, '
                                 'count_at_most = { max = 2 } }\nmax_comparisons = 2\n'
                                 'max_evaluations_per_subject = 5\nevaluation_period = "week"'))
    assert inline.rules == (("home", digest),)
    assert inline.thresholds == {"area_m2": (Decimal(0), Decimal("500.5")), "count_at_most": (None, Decimal(2))}
    assert (inline.max_comparisons, inline.max_evaluations_per_subject, inline.evaluation_period) == (2, 5, "week")
    tables, = parse_policy(grant() + f'[[grants.rules]]\nid = "home"\ndigest = "{digest.upper()}"\n')
    assert tables.rules == (("home", digest),) and not tables.bounded
    assert (tables.max_evaluations_per_subject, tables.evaluation_period) == (DEFAULT_EVALUATIONS, "day")


@pytest.mark.parametrize("extra, expected", [
    ('rules = [{ id = "home", digest = "abc" }]', "digest of 'home' must be 64 hex digits"),
    ('rules = [{ id = "home" }]', "each of 'rules' must be"),
    ('rules = "home"', "'rules' must be a list"),
    ('thresholds = { area_m2 = 5 }', "thresholds 'area_m2' must be a table"),
    ('thresholds = { area_m2 = { max = "lots" } }', "must be a number or a 'YYYY-MM-DD' date"),
    ('thresholds = { area_m2 = { min = 5, max = 1 } }', "'min' must not exceed 'max'"),
    ('thresholds = { area_m2 = { top = 1 } }', "with 'min' and/or 'max'"),
    ("max_comparisons = 0", "'max_comparisons' must be an integer >= 1"),
    ("max_evaluations_per_subject = true", "'max_evaluations_per_subject' must be an integer >= 1"),
    ('evaluation_period = "year"', "'evaluation_period' must be one of hour, day, week"),
    ('pins = 1', "unknown field 'pins'"),
])
def test_bad_comparison_fields_are_named(extra, expected):
    with pytest.raises(InvalidInput, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_policy(grant(extra))


def test_written_grants_read_back_the_same(tmp_path):
    r = parse_rule(HEAD + HOME)
    g, = parse_policy(grant(pin(r) + '\nthresholds = { area_m2 = { max = 500.50 }, registered_on = '
                                     '{ min = "2000-01-01" } }\nmax_comparisons = 3\nmax_evaluations_per_subject = 7'
                                     '\nevaluation_period = "hour"'))
    path = admin.write_grants(tmp_path / "policy.toml", [g])
    assert parse_policy(path.read_text()) == [g]


# ----- admission --------------------------------------------------------------------------------------------------
def test_pinned_rule_is_allowed_and_a_changed_one_refused_naming_the_criterion(tmp_path):
    r = parse_rule(HEAD + HOME)
    p = policy(tmp_path, grant(pin(r)))
    assert authorise(p, r).rules == (("home", r.criteria_digest("housing")),)
    for old, new in (("max = 1", "max = 2"), ("area_m2 > 20", "area_m2 > 21")):
        with pytest.raises(PermissionDenied) as err:
            authorise(p, parse_rule(HEAD + HOME.replace(old, new)))
        assert str(err.value).startswith("criterion 'one_home': housing's grant on 'properties' does not allow "
                                         "rule 'home' with these thresholds")
    # Other kinds of job (PSI, lookups: no rule) are not comparisons.
    assert p.authorise("properties", "id_number", "civil_affairs", "p.q", {"id_number": "join_key"})


def test_grant_without_pins_or_bounds_allows_no_comparison(tmp_path):
    r = parse_rule(HEAD + HOME)
    with pytest.raises(PermissionDenied, match="criterion 'one_home': housing's grant on 'properties' does not "
                                               "allow rule 'home' \\(the grant pins no such rule"):
        authorise(policy(tmp_path, grant()), r)


def test_bounds_cover_every_threshold_and_count_comparisons(tmp_path):
    home, total = parse_rule(HEAD + HOME), parse_rule(HEAD + SUM)
    bounded = ('thresholds = { count_at_most = { max = 2 }, area_m2 = { min = 10, max = 400 } }\n'
               'max_comparisons = 2')
    p = policy(tmp_path, grant(bounded))
    assert authorise(p, home) and authorise(p, total, {"id_number": "join_key", "area_m2": "aggregate"})
    cases = [
        (HOME.replace("max = 1", "max = 3"), "max 3 is outside the bounds for 'count_at_most'"),
        (HOME.replace("area_m2 > 20", "area_m2 > 5"), "'area_m2' compared with 5 is outside the bounds for 'area_m2'"),
        (SUM.replace("limit = 300", "limit = 401"), "limit 401.00 is outside the bounds for 'area_m2'"),
        (SUM + SUM.replace("small_area", "second").replace("300", "200") + SUM.replace("small_area", "third"),
         "criterion 'third': housing's grant on 'properties' allows at most 2 comparison(s) of column 'area_m2'"),
    ]
    for criteria, expected in cases:
        with pytest.raises(PermissionDenied) as err:
            authorise(p, parse_rule(HEAD + criteria), {"id_number": "join_key", "usage": "predicate",
                                                       "area_m2": "aggregate"})
        assert expected in str(err.value)
    # A threshold without a bound is refused: here count_at_most's max under area-only bounds.
    with pytest.raises(PermissionDenied, match="max 1 has no bound in the grant"):
        authorise(policy(tmp_path, grant('thresholds = { area_m2 = { max = 400 } }\nmax_comparisons = 5')), home)
    # max_comparisons alone bounds exists / none_exists (no thresholds) but nothing with a threshold.
    exists = parse_rule(HEAD + HOME.replace('"count_at_most"', '"exists"').replace("max = 1\n", "")
                        .replace(" and area_m2 > 20", ""))
    assert authorise(policy(tmp_path, grant("max_comparisons = 1")), exists, USES)


def test_refusal_comes_from_the_closest_grant(tmp_path):
    home = parse_rule(HEAD + HOME)
    other = parse_rule(HEAD.replace('"home"', '"other"') + HOME)
    text = grant(pin(other)) + "\n" + grant(pin(home))
    changed = parse_rule(HEAD + HOME.replace("max = 1", "max = 2"))
    with pytest.raises(PermissionDenied, match="does not allow rule 'home' with these thresholds"):
        authorise(policy(tmp_path, text), changed)
    # Column uses are checked first: the predicate trick is refused even for a pinned rule.
    trick = parse_rule(HEAD + SUM + 'where = "area_m2 >= 0"\n')
    with pytest.raises(PermissionDenied, match="does not allow column use: area_m2 as aggregate"):
        authorise(policy(tmp_path, grant(pin(trick), columns='area_m2 = "predicate"')), trick,
                  {"id_number": "join_key", "area_m2": "aggregate"})


# ----- the officer's view -----------------------------------------------------------------------------------
def test_pc_policy_digest_prints_the_line_to_pin(capsys):
    import json
    import pathlib

    from pc_client.cli import main
    dibao = pathlib.Path(__file__).resolve().parents[2] / "rules" / "dibao.toml"
    digest = parse_rule(dibao.read_text(encoding="utf-8")).criteria_digest("housing")
    assert main(["policy", "digest", str(dibao), "--agency", "housing"]) == 0
    out = capsys.readouterr().out
    assert f'rules = [{{ id = "dibao", digest = "{digest}" }}]' in out and "at_most_one_home" in out
    # The printed line is a valid grant field.
    assert parse_policy(grant(out.splitlines()[1]))[0].rules == (("dibao", digest),)
    assert main(["policy", "digest", str(dibao), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {d["agency"] for d in doc} == {"housing", "hrss", "public_security", "tax"}
    assert main(["policy", "digest", str(dibao), "--agency", "market_regulation"]) == 2
    assert "has no criterion reading data of 'market_regulation'" in capsys.readouterr().err


# ----- red-team: equality comparisons are thresholds too ------------------------------------------------------
@pytest.mark.parametrize("where", [
    "area_m2 = 87.5",                                                # one exact value, outside the bounds
    " or ".join(f"area_m2 = {v}" for v in range(60)),               # a set of values: a value oracle
    "area_m2 != 20",
])
def test_equality_on_a_bounded_column_is_a_threshold(tmp_path, where):
    probe = ('[[criteria]]\nname = "probe"\ntype = "exists"\nsource = "housing.properties"\n'
             f'where = "{where}"\n')
    p = policy(tmp_path, grant('thresholds = { area_m2 = { min = 100, max = 500 } }\nmax_comparisons = 1'))
    with pytest.raises(PermissionDenied, match="criterion 'probe'.*outside the bounds for 'area_m2'"):
        authorise(p, parse_rule(HEAD + probe))
    # Inside the bounds it is allowed, as an ordering comparison would be; text equality stays a category.
    inside = probe.replace(where, "area_m2 = 120 and usage = 'residential'")
    assert authorise(p, parse_rule(HEAD + inside)).dataset == "properties"


def test_query_with_names_agencies_and_round_trips():
    from pc_node.admin import grants_toml
    from pc_node.policy import parse_policy
    base = ('[[grants]]\ndataset = "d"\nrequester = "civil_affairs"\npurposes = ["p"]\n{extra}'
            '[grants.columns]\nid_number = "join_key"\n')
    g = parse_policy(base.format(extra='query_with = ["tax", "housing", "tax"]\n'))[0]
    assert g.query_with == ("housing", "tax")
    assert parse_policy(grants_toml([g]))[0].query_with == ("housing", "tax")
    assert parse_policy(base.format(extra=""))[0].query_with == ()
    for bad in ('query_with = "tax"\n', 'query_with = ["Tax!"]\n', "query_with = [1]\n"):
        with pytest.raises(InvalidInput) as exc:
            parse_policy(base.format(extra=bad))
        assert "query_with" in str(exc.value)
