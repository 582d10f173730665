"""A node's sharing policy: default deny, enforced at the provider for every request.

policy.toml::

    [[grants]]
    dataset = "vehicles"
    requester = "civil_affairs"
    purposes = ["social_assistance.eligibility"]
    approval = "auto"                 # or "manual" (事前审批)
    reveal = "verdict"                # the most a requester may see: verdict | reasons
    # federated queries (docs/query.md): min_group_size = 5; epsilon = 0.5 (DP demanded, the most ε per
    # query); epsilon_budget = 5 (ε per requester per evaluation_period, the ledger in governance)
    [grants.columns]                  # column -> join_key|predicate|group_by|aggregate|masked|plaintext|none
    id_number = "join_key"
    vehicle_type = "predicate"
    [grants.quota]
    jobs_per_hour = 60
    jobs_per_day = 500
    subjects_per_hour = 1000000
    subjects_per_day = 5000000

Column uses are ranked: a grant of ``plaintext`` ≥ ``masked`` ≥ ``aggregate`` ≥ ``predicate``
allows every lower use; ``join_key`` is for the key column only; ``none`` allows nothing.
The file is re-read when it changes (checked on every request).

Comparisons (every verification criterion: ``sum_below``, ``count_at_most``, ``exists``,
``none_exists``) are allowed only as the grant pins them, so a requester cannot turn thresholds
into a value oracle (docs/rules.md, "Provider policy")::

    rules = [{ id = "dibao", digest = "<pc policy digest dibao.toml --agency housing>" }]
    # and/or bounds: every threshold (sum_below lines, count_at_most's max, < <= > >= in where, and = != with a number or date)
    # inside [min, max] of its column (or criterion type), each column compared at most
    # max_comparisons times per job (default 1 once thresholds or max_comparisons is set)
    thresholds = { monthly_amount = { max = 3000 }, count_at_most = { max = 2 } }
    max_comparisons = 1
    max_evaluations_per_subject = 3   # per requester and subject at this node (default 3 …
    evaluation_period = "day"         # … a day; hour | day | week)
    min_group_size = 5                # federated queries: smaller groups are omitted (default 5)
    query_with = ["public_security"]  # federated queries: agencies whose datasets may be combined
                                      # with this one in one query (default none; docs/query.md)
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import threading
import tomllib
from decimal import Decimal, InvalidOperation

from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.identity import check_name
from pc_rules import pinning

USES = ("none", "join_key", "predicate", "group_by", "aggregate", "masked", "plaintext")
#: ``group_by`` (a federated query's GROUP BY on a column with declared categories) sits between
#: ``predicate`` and ``aggregate``: per-category aggregates say more than pass/fail bits.
RANK = {"none": 0, "predicate": 1, "group_by": 1.5, "aggregate": 2, "masked": 3, "plaintext": 4}
QUOTA_KEYS = ("jobs_per_hour", "jobs_per_day", "subjects_per_hour", "subjects_per_day")
DEFAULT_QUOTA = {"jobs_per_hour": 120, "jobs_per_day": 1000, "subjects_per_hour": 5_000_000,
                 "subjects_per_day": 20_000_000}
#: Periods of ``evaluation_period`` in seconds.
PERIODS = {"hour": 3600, "day": 86400, "week": 7 * 86400}
DEFAULT_EVALUATIONS = 3          # per requester and subject per period
DEFAULT_PERIOD = "day"
DEFAULT_MAX_COMPARISONS = 1      # once a grant bounds thresholds
DEFAULT_MIN_GROUP_SIZE = 5       # federated queries: smaller groups are suppressed (docs/query.md)
GRANT_KEYS = ("dataset", "requester", "purposes", "columns", "approval", "reveal", "quota", "rules", "thresholds",
              "max_comparisons", "max_evaluations_per_subject", "evaluation_period", "min_group_size",
              "epsilon", "epsilon_budget", "query_with")
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_DIGEST = re.compile(r"[0-9a-fA-F]{64}\Z")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


@dataclasses.dataclass(frozen=True)
class Grant:
    dataset: str
    requester: str
    purposes: tuple[str, ...]
    columns: dict
    approval: str = "auto"
    reveal: str = "verdict"
    quota: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_QUOTA))
    #: Pinned rules: (rule id, ``Rule.criteria_digest`` of this node's agency).
    rules: tuple[tuple[str, str], ...] = ()
    #: Bounds: column or criterion type -> (min, max), either None; values Decimal or date text.
    thresholds: dict = dataclasses.field(default_factory=dict)
    max_comparisons: int | None = None
    max_evaluations_per_subject: int = DEFAULT_EVALUATIONS
    evaluation_period: str = DEFAULT_PERIOD
    #: Federated queries: a group with fewer distinct subjects is omitted (decided under encryption).
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    #: Federated queries: differential privacy demanded, the most ε one query may spend, and the
    #: ε a requester may spend per ``evaluation_period`` (the ledger in governance; docs/query.md).
    epsilon: float | None = None
    epsilon_budget: float | None = None
    #: Federated queries: the other provider agencies whose data may meet this dataset's in one
    #: query. Nothing proves that a provider answers as the protocol asks, so each provider
    #: names whom it trusts not to answer falsely together with the requester (docs/query.md).
    query_with: tuple[str, ...] = ()

    def allows(self, column: str, use: str, key_column: str) -> bool:
        granted = self.columns.get(column, "none")
        if use == "join_key":
            return column == key_column and granted in ("join_key", "plaintext")
        if granted == "join_key":
            return False
        return RANK.get(granted, 0) >= RANK[use] > 0

    @property
    def bounded(self) -> bool:
        """Whether the grant allows comparisons by bounds (``thresholds`` / ``max_comparisons``)."""
        return bool(self.thresholds) or self.max_comparisons is not None

    def pins(self, rule_id: str) -> bool:
        return any(rid == rule_id for rid, _ in self.rules)

    def comparison_refusal(self, rule, agency: str, dataset: str, key_column: str) -> str | None:
        """Why this grant does not allow ``rule``'s comparisons on ``dataset`` (one sentence
        naming the criterion), or None: the rule is pinned with its digest, or every threshold
        is inside the grant's bounds and no column is compared too often."""
        touching = pinning.criteria_touching(rule, agency, dataset)
        if not touching:
            return None
        digest = pinning.criteria_digest(rule, agency)
        if (rule.id, digest) in self.rules:
            return None
        where = f"{agency}'s grant on '{dataset}'"
        if self.bounded:
            refusal = self._bounds_refusal(rule, agency, dataset, key_column, where)
            if refusal is None:
                return None
            if not self.pins(rule.id):
                return refusal
        if self.pins(rule.id):
            return (f"criterion '{touching[0].name}': {where} does not allow rule '{rule.id}' with these thresholds"
                    f" (its criteria touching {agency} differ from the pinned digest)")
        return (f"criterion '{touching[0].name}': {where} does not allow rule '{rule.id}'"
                " (the grant pins no such rule and bounds no thresholds)")

    def _bounds_refusal(self, rule, agency, dataset, key_column, where) -> str | None:
        for t in pinning.thresholds(rule, agency, dataset):
            key = next((k for k in t.keys if k in self.thresholds), None)
            shown = f"{t.field} {t.value}" if t.field != "where" else f"'{t.keys[0]}' compared with {t.value}"
            if key is None:
                return (f"criterion '{t.criterion}': {where} does not allow rule '{rule.id}' with these thresholds"
                        f" ({shown} has no bound in the grant)")
            if not _within(t.value, *self.thresholds[key]):
                return (f"criterion '{t.criterion}': {where} does not allow rule '{rule.id}' with these thresholds"
                        f" ({shown} is outside the bounds for '{key}')")
        limit = self.max_comparisons if self.max_comparisons is not None else DEFAULT_MAX_COMPARISONS
        seen: dict[str, int] = {}
        for criterion, column in pinning.compared_columns(rule, agency, dataset, key_column):
            seen[column] = seen.get(column, 0) + 1
            if seen[column] > limit:
                return (f"criterion '{criterion}': {where} allows at most {limit} comparison(s) of column"
                        f" '{column}' per job")
        return None


def _within(value, low, high) -> bool:
    if isinstance(value, str) != isinstance(low if low is not None else high, str):
        return False      # a date bound does not cover a number, nor the other way round
    if not isinstance(value, str):
        value = Decimal(value)
    return (low is None or value >= low) and (high is None or value <= high)


def _bound_value(where: str, key: str, which: str, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InvalidInput(f"{where}: thresholds '{key}': '{which}' must be a number or a 'YYYY-MM-DD' date")
    text = repr(v) if isinstance(v, float) else str(v)
    if isinstance(v, str) and _DATE.match(v):
        return v
    if not _NUMBER.match(text):
        raise InvalidInput(f"{where}: thresholds '{key}': '{which}' must be a number or a 'YYYY-MM-DD' date")
    try:
        return Decimal(text)
    except InvalidOperation:
        raise InvalidInput(f"{where}: thresholds '{key}': '{which}' is not a number") from None


def _parse_pins(where: str, g: dict) -> dict:
    """The comparison fields of one grant (rules, thresholds, limits), validated."""
    rules = []
    raw_rules = g.get("rules", [])
    if not isinstance(raw_rules, list):
        raise InvalidInput(f"{where}: 'rules' must be a list of {{ id = \"…\", digest = \"…\" }}")
    for r in raw_rules:
        if not isinstance(r, dict) or set(r) != {"id", "digest"} or not isinstance(r["id"], str) \
                or not isinstance(r["digest"], str):
            raise InvalidInput(f"{where}: each of 'rules' must be {{ id = \"…\", digest = \"…\" }}")
        if not _RULE_ID.match(r["id"]):
            raise InvalidInput(f"{where}: rules: invalid rule id")
        if not _DIGEST.match(r["digest"]):
            raise InvalidInput(f"{where}: rules: digest of '{r['id']}' must be 64 hex digits"
                               " (pc policy digest RULE.toml --agency AGENCY)")
        rules.append((r["id"], r["digest"].lower()))
    thresholds = {}
    raw = g.get("thresholds", {})
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'thresholds' must be a table of column or criterion type -> {{ min, max }}")
    for key, b in raw.items():
        if not isinstance(b, dict) or not b or set(b) - {"min", "max"}:
            raise InvalidInput(f"{where}: thresholds '{key}' must be a table with 'min' and/or 'max'")
        low, high = (_bound_value(where, key, k, b[k]) if k in b else None for k in ("min", "max"))
        if low is not None and high is not None and (isinstance(low, str) != isinstance(high, str) or low > high):
            raise InvalidInput(f"{where}: thresholds '{key}': 'min' must not exceed 'max'")
        thresholds[key] = (low, high)
    out: dict = {"rules": tuple(rules), "thresholds": thresholds}
    for k, lowest in (("max_comparisons", 1), ("max_evaluations_per_subject", 1), ("min_group_size", 1)):
        if k in g:
            v = g[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
                raise InvalidInput(f"{where}: '{k}' must be an integer >= {lowest}")
            out[k] = v
    for k in ("epsilon", "epsilon_budget"):
        if k in g:
            v = g[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1000:
                raise InvalidInput(f"{where}: '{k}' must be a number > 0 (at most 1000)")
            out[k] = float(v)
    if "query_with" in g:
        v = g["query_with"]
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise InvalidInput(f"{where}: 'query_with' must be a list of agency names")
        try:
            out["query_with"] = tuple(sorted({check_name("agency", a) for a in v}))
        except InvalidInput:
            raise InvalidInput(f"{where}: 'query_with' must be a list of agency names") from None
    if "evaluation_period" in g:
        if g["evaluation_period"] not in PERIODS:
            raise InvalidInput(f"{where}: 'evaluation_period' must be one of {', '.join(PERIODS)}")
        out["evaluation_period"] = g["evaluation_period"]
    return out


def _toml_value(v) -> str:
    return str(v) if isinstance(v, Decimal) else f'"{v}"'


def pins_toml(g: Grant) -> str:
    """The comparison fields of ``g`` as TOML lines inside its ``[[grants]]`` table (before any
    sub-table), only those that differ from the defaults; for writers of policy files."""
    lines = []
    if g.rules:
        lines.append("rules = [" + ", ".join(f'{{ id = "{rid}", digest = "{d}" }}' for rid, d in g.rules) + "]")
    if g.thresholds:
        parts = []
        for key, (low, high) in g.thresholds.items():
            bound = ", ".join(f"{n} = {_toml_value(v)}" for n, v in (("min", low), ("max", high)) if v is not None)
            parts.append(f'"{key}" = {{ {bound} }}')
        lines.append("thresholds = { " + ", ".join(parts) + " }")
    if g.max_comparisons is not None:
        lines.append(f"max_comparisons = {int(g.max_comparisons)}")
    if g.max_evaluations_per_subject != DEFAULT_EVALUATIONS:
        lines.append(f"max_evaluations_per_subject = {int(g.max_evaluations_per_subject)}")
    if g.evaluation_period != DEFAULT_PERIOD:
        lines.append(f'evaluation_period = "{g.evaluation_period}"')
    if g.min_group_size != DEFAULT_MIN_GROUP_SIZE:
        lines.append(f"min_group_size = {int(g.min_group_size)}")
    for name in ("epsilon", "epsilon_budget"):
        if getattr(g, name) is not None:
            lines.append(f"{name} = {float(getattr(g, name))!r}")
    if g.query_with:
        lines.append("query_with = [" + ", ".join(f'"{a}"' for a in g.query_with) + "]")
    return "".join(line + "\n" for line in lines)


def parse_policy(text: str, source: str = "policy.toml") -> list[Grant]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source}: not valid TOML ({exc})") from None
    unknown = set(doc) - {"grants"}
    if unknown:
        raise InvalidInput(f"{source}: unknown key '{sorted(unknown)[0]}'")
    grants = []
    for i, g in enumerate(doc.get("grants", [])):
        where = f"{source}: grant #{i + 1}"
        bad = set(g) - set(GRANT_KEYS)
        if bad:
            raise InvalidInput(f"{where}: unknown field '{sorted(bad)[0]}'")
        try:
            check_name("dataset", g.get("dataset", ""))
            check_name("requester", g.get("requester", ""))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        purposes = g.get("purposes", [])
        if not purposes or not all(isinstance(p, str) and p for p in purposes):
            raise InvalidInput(f"{where}: 'purposes' must be a non-empty list of strings")
        columns = g.get("columns", {})
        for c, use in columns.items():
            if use not in USES:
                raise InvalidInput(f"{where}: column '{c}': use must be one of {', '.join(USES)}")
        if g.get("approval", "auto") not in ("auto", "manual"):
            raise InvalidInput(f"{where}: approval must be auto or manual")
        if g.get("reveal", "verdict") not in ("verdict", "reasons"):
            raise InvalidInput(f"{where}: reveal must be verdict or reasons")
        quota = dict(DEFAULT_QUOTA)
        for k, v in (g.get("quota") or {}).items():
            if k not in QUOTA_KEYS or not isinstance(v, int) or v < 0:
                raise InvalidInput(f"{where}: quota '{k}' must be one of {', '.join(QUOTA_KEYS)} with a count >= 0")
            quota[k] = v
        grants.append(Grant(g["dataset"], g["requester"], tuple(purposes), dict(columns),
                            g.get("approval", "auto"), g.get("reveal", "verdict"), quota, **_parse_pins(where, g)))
    return grants


class Policy:
    """The node's current grants, re-read when the file changes."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._grants: list[Grant] = []
        self.reload()

    def reload(self) -> list[Grant]:
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._grants, self._stamp = [], None   # no file: deny everything
                return []
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._grants = parse_policy(self.path.read_text(encoding="utf-8"), self.path.name)
                self._stamp = stamp
            return list(self._grants)

    def grants(self) -> list[Grant]:
        try:
            return self.reload()
        except InvalidInput:
            # A broken edit must not open anything up: keep the last good grants.
            with self._lock:
                return list(self._grants)

    def grants_for(self, dataset: str) -> list[Grant]:
        return [g for g in self.grants() if g.dataset == dataset]

    def authorise(self, dataset: str, key_column: str, requester: str, purpose: str,
                  uses: dict[str, str], reveal: str = "verdict", rule=None, agency: str = "") -> Grant:
        """The grant allowing ``uses`` (column -> use), ``reveal`` and, for a verification, the
        comparisons of ``rule`` (this node being ``agency``); else PermissionDenied naming what
        is missing — of the grant that came closest (a pin of the same rule first)."""
        candidates = [g for g in self.grants() if g.dataset == dataset and g.requester == requester]
        if not candidates:
            raise PermissionDenied(f"no grant for requester '{requester}' on dataset '{dataset}'")
        candidates = [g for g in candidates if purpose in g.purposes]
        if not candidates:
            raise PermissionDenied(f"purpose '{purpose}' is not granted to '{requester}' on dataset '{dataset}'")
        best: tuple | None = None
        for g in candidates:
            denied = [f"{c} as {u}" for c, u in uses.items() if not g.allows(c, u, key_column)]
            if denied:
                failure = (0, f"dataset '{dataset}' does not allow column use: {', '.join(denied)}")
            elif reveal != "verdict" and g.reveal != "reasons":
                failure = (1, f"dataset '{dataset}' allows reveal 'verdict' only, not per-criterion reasons")
            else:
                refusal = rule and g.comparison_refusal(rule, agency, dataset, key_column)
                if not refusal:
                    return g
                failure = (2 + int(g.pins(rule.id)), refusal)
            if best is None or failure[0] > best[0]:
                best = failure
        raise PermissionDenied(best[1])
