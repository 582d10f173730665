"""The one table of job kinds: name, parameters and their validation.

A job's signed spec (``pc_common.jobspec``) carries ``kind`` and ``params``; every reader gets
the parameters through :func:`params_of`, typed and validated, never as a free dict. Each side
keeps its own static table over the same kinds and checks at import that it covers exactly
these (:func:`check_covers`):

* node — ``pc_node.steps.KINDS``: kind → complete and sign a spec, what the job asks of this
  node's datasets (admission);
* coordinator — ``pc_coordinator.kinds.KINDS``: kind → validate against the catalog (returns
  the parties that must admit), orchestrate.

Adding a kind: a ``JobParams`` class and a ``KINDS`` entry here, one module per side, and one
line in each side's table.

Validation here is structural (shapes and types). pc_common imports no other project package,
so a verification's rule stays a JSON object here and is read with the rule language
(``pc_rules``) by each side: its providers are the parties that admit it. What depends on the
catalog, the policy or the caller is checked by each side too.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Mapping

from pc_common.errors import InvalidInput

HE_BACKENDS = ("bfv", "paillier")
PSI_PROTOCOLS = ("kkrt", "ecdh")
DEFAULT_PURPOSE = "data_matching"


def _value(params: Mapping, name: str, kind: type, default: object) -> object:
    value = params.get(name, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"job parameter '{name}' must be {_TYPE_NAMES[kind]}")
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list of strings"}


def _str(params: Mapping, name: str, default: str = "") -> str:
    return _value(params, name, str, default)  # type: ignore[return-value]


def _bool(params: Mapping, name: str) -> bool:
    return _value(params, name, bool, False)  # type: ignore[return-value]


def _count(params: Mapping, name: str) -> int:
    n: int = _value(params, name, int, 0)  # type: ignore[assignment]
    if n < 0:
        raise InvalidInput(f"job parameter '{name}' must not be negative")
    return n


def _strs(params: Mapping, name: str) -> tuple[str, ...]:
    items: list = _value(params, name, list, [])  # type: ignore[assignment]
    if not all(isinstance(i, str) for i in items):
        raise InvalidInput(f"job parameter '{name}' must be {_TYPE_NAMES[list]}")
    return tuple(items)


def _check_keys(params: Mapping, allowed: tuple[str, ...], kind: str) -> None:
    if not isinstance(params, Mapping):
        raise InvalidInput("job parameters must be a JSON object")
    unknown = sorted(str(k) for k in set(params) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown parameter '{unknown[0][:32]}' for a {kind} job "
                           f"(expected {', '.join(allowed)})")


def parse_refs(refs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``AGENCY.DATASET`` references as (agency, dataset): at least two, one per agency."""
    out = []
    for r in refs:
        agency, _, ds = r.partition(".")
        if not agency or not ds or "." in ds:
            raise InvalidInput(f"'{r[:64]}' is not of the form AGENCY.DATASET")
        out.append((agency, ds))
    if len(out) < 2:
        raise InvalidInput("PSI needs your dataset and at least one provider dataset (AGENCY.DATASET)")
    agencies = [a for a, _ in out]
    if len(set(agencies)) != len(agencies):
        raise InvalidInput("each agency may take part with one dataset only")
    return tuple(out)


class JobParams:
    """Typed parameters of one job kind (subclasses are frozen dataclasses).

    ``subjects`` (a field of every kind) is set by the requester node when it signs the spec:
    the number of items the job asks about, which providers charge against their quota.
    """

    KEYS: ClassVar[tuple[str, ...]]
    subjects: int

    @classmethod
    def from_params(cls, params: Mapping) -> "JobParams":
        raise NotImplementedError


@dataclass(frozen=True)
class VerifyParams(JobParams):
    """Eligibility verification: a rule over the requester's uploaded subjects."""

    rule: Mapping                    # the rule as a JSON object (``pc_rules.rules.Rule.to_dict``)
    he: str = "bfv"
    subject_set: str = ""            # set by the requester node: the upload it verifies,
    subjects: int = 0                # its size
    groups: int = 0                  # and its number of groups

    KEYS: ClassVar[tuple[str, ...]] = ("rule", "he", "subject_set", "subjects", "groups")

    @classmethod
    def from_params(cls, params: Mapping) -> "VerifyParams":
        _check_keys(params, cls.KEYS, "verify")
        rule = params.get("rule")
        if not isinstance(rule, Mapping):
            raise InvalidInput("job spec: the rule must be a table (JSON object)")
        he = _str(params, "he", "bfv")
        if he not in HE_BACKENDS:
            raise InvalidInput("homomorphic backend must be bfv or paillier")
        return cls(rule=rule, he=he, subject_set=_str(params, "subject_set"), subjects=_count(params, "subjects"),
                   groups=_count(params, "groups"))


class _OverDatasets(JobParams):
    datasets: tuple[tuple[str, str], ...]   # (agency, dataset); the requester's first

    def providers(self) -> list[str]:
        """The parties that must admit the job: every dataset's agency after the requester."""
        return [a for a, _ in self.datasets[1:]]

    def own_dataset(self, agency: str) -> str | None:
        """``agency``'s dataset in the job, if it takes part."""
        return next((ds for a, ds in self.datasets if a == agency), None)


@dataclass(frozen=True)
class PsiParams(_OverDatasets):
    """PSI, PSI-CA and k-party PSI over the requester's dataset and the providers'."""

    datasets: tuple[tuple[str, str], ...]
    cardinality_only: bool = False
    result_to_all: bool = False
    purpose: str = DEFAULT_PURPOSE
    subjects: int = 0                       # rows of the requester's dataset
    protocol: str = ""                      # "kkrt" | "ecdh"; "" = the planner's choice (psi_protocol)
    crypto: str = ""                        # KKRT's primitives: "aes" (AES, BLAKE3; = "") | "gm" (SM4, SM3)

    KEYS: ClassVar[tuple[str, ...]] = ("datasets", "cardinality_only", "result_to_all", "purpose", "subjects",
                                       "protocol", "crypto")

    @classmethod
    def from_params(cls, params: Mapping) -> "PsiParams":
        _check_keys(params, cls.KEYS, "psi")
        p = cls(datasets=parse_refs(_strs(params, "datasets")), cardinality_only=_bool(params, "cardinality_only"),
                result_to_all=_bool(params, "result_to_all"), purpose=_str(params, "purpose") or DEFAULT_PURPOSE,
                subjects=_count(params, "subjects"), protocol=_str(params, "protocol"), crypto=_str(params, "crypto"))
        if p.result_to_all and (len(p.datasets) != 2 or p.cardinality_only):
            raise InvalidInput("--result-to-all is for two-party PSI without --cardinality-only")
        if p.protocol not in ("",) + PSI_PROTOCOLS:
            raise InvalidInput("PSI protocol must be kkrt or ecdh")
        if p.protocol == "kkrt" and (len(p.datasets) != 2 or p.cardinality_only or p.result_to_all):
            raise InvalidInput("--protocol kkrt is for two-party PSI without --cardinality-only or "
                               "--result-to-all (use --protocol ecdh)")
        if p.crypto not in ("", "aes", "gm"):
            raise InvalidInput("PSI crypto profile must be aes or gm")
        if p.crypto == "gm" and p.engine != "kkrt":
            raise InvalidInput("--crypto gm is a profile of the KKRT protocol (two-party PSI without "
                               "--cardinality-only or --result-to-all)")
        return p

    @property
    def engine(self) -> str:
        """The protocol this job runs: the one named, else the planner's choice."""
        return self.protocol or psi_protocol(len(self.datasets), self.cardinality_only, self.result_to_all)

    def uses(self, agency: str) -> dict[str, dict[str, str]]:
        """What the job asks of ``agency``'s datasets: ``{dataset: {column: use}}`` (the key
        column's ``join_key`` use is implied)."""
        ds = self.own_dataset(agency)
        return {} if ds is None else {ds: {}}


def psi_protocol(n_datasets: int, cardinality_only: bool, result_to_all: bool) -> str:
    """The PSI planner, in one place: KKRT16 (OT extension, fastest) for a plain two-party
    intersection; ECDH where only it provides the job (PSI-CA, k-party, result to both)."""
    return "kkrt" if n_datasets == 2 and not cardinality_only and not result_to_all else "ecdh"


@dataclass(frozen=True)
class LookupParams(_OverDatasets):
    """Query-private lookup (匿踪查询): the requester's identifiers in one provider dataset."""

    datasets: tuple[tuple[str, str], ...]
    labels: tuple[str, ...] = ()            # provider columns returned for matches
    masked: bool = False                    # labels masked (policy use ``masked``)
    purpose: str = DEFAULT_PURPOSE
    subjects: int = 0                       # rows of the requester's dataset

    KEYS: ClassVar[tuple[str, ...]] = ("datasets", "labels", "masked", "purpose", "subjects")

    @classmethod
    def from_params(cls, params: Mapping) -> "LookupParams":
        _check_keys(params, cls.KEYS, "lookup")
        refs = parse_refs(_strs(params, "datasets"))
        if len(refs) != 2:
            raise InvalidInput("a lookup names your dataset and exactly one provider dataset")
        return cls(datasets=refs, labels=_strs(params, "labels"), masked=_bool(params, "masked"),
                   purpose=_str(params, "purpose") or DEFAULT_PURPOSE, subjects=_count(params, "subjects"))

    @property
    def provider(self) -> tuple[str, str]:
        """(agency, dataset) of the provider."""
        return self.datasets[1]

    def uses(self, agency: str) -> dict[str, dict[str, str]]:
        ds = self.own_dataset(agency)
        if ds is None:
            return {}
        return {ds: {col: "masked" if self.masked else "plaintext" for col in self.labels}}


@dataclass(frozen=True)
class QueryParams(JobParams):
    """Federated query (joint statistics): a SQL subset over the requester's dataset and one
    provider's (``pc_rules.query``; each side re-parses the signed text). docs/query.md."""

    sql: str
    min_group_size: int = 5                 # groups with fewer distinct subjects are omitted
    purpose: str = DEFAULT_PURPOSE
    subjects: int = 0                       # set by the requester node: rows after its WHERE
    groups: int = 0                         # and their number of groups
    epsilon: float = 0.0                    # differential privacy per query (0: none; docs/query.md)

    KEYS: ClassVar[tuple[str, ...]] = ("sql", "min_group_size", "purpose", "subjects", "groups", "epsilon")

    @classmethod
    def from_params(cls, params: Mapping) -> "QueryParams":
        _check_keys(params, cls.KEYS, "query")
        sql = _str(params, "sql")
        if not sql.strip() or len(sql) > 8000:
            raise InvalidInput("job parameter 'sql' must be a query of 1 to 8000 characters")
        k = _value(params, "min_group_size", int, 5)
        if not 1 <= k <= 1 << 24:   # type: ignore[operator]
            raise InvalidInput("job parameter 'min_group_size' must be from 1 to 16777216")
        eps = params.get("epsilon", 0.0)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps == 0 or 0.01 <= eps <= 10):
            raise InvalidInput("job parameter 'epsilon' must be 0 (no differential privacy) or from 0.01 to 10")
        return cls(sql=sql, min_group_size=k, purpose=_str(params, "purpose") or DEFAULT_PURPOSE,  # type: ignore[arg-type]
                   subjects=_count(params, "subjects"), groups=_count(params, "groups"), epsilon=float(eps))


PRIVATE_NO_DP = ("--private cannot carry differential privacy: the requester learns exact per-group match "
                 "counts (docs/query_private.md); run the query without --private to use --epsilon")


@dataclass(frozen=True)
class QueryPrivateParams(QueryParams):
    """Query-private federated query (``--private``, docs/query_private.md): the same signed
    fields as :class:`QueryParams`; differential privacy is refused (exact counts leak)."""

    @classmethod
    def from_params(cls, params: Mapping) -> "QueryPrivateParams":
        if isinstance(params, Mapping) and params.get("epsilon") not in (None, 0, 0.0, ""):
            raise InvalidInput(PRIVATE_NO_DP)
        q = QueryParams.from_params(params)
        return cls(**{f.name: getattr(q, f.name) for f in fields(q)})


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[JobParams]
    title: str


KINDS: dict[str, JobKind] = {
    "verify": JobKind("verify", VerifyParams, "eligibility verification (rule over subjects)"),
    "psi": JobKind("psi", PsiParams, "private set intersection (PSI, PSI-CA, k-party)"),
    "lookup": JobKind("lookup", LookupParams, "query-private lookup (匿踪查询)"),
    "query": JobKind("query", QueryParams, "federated query: joint statistics in SQL (minimum group size)"),
    "query_private": JobKind("query_private", QueryPrivateParams,
                             "query-private federated query (--private: providers learn only set sizes)"),
}


def kind(name: str) -> JobKind:
    k = KINDS.get(name)
    if k is None:
        raise InvalidInput(f"unknown job kind '{str(name)[:32]}' (expected one of {', '.join(KINDS)})")
    return k


def params_of(doc: Mapping, expected: str | None = None):
    """The typed parameters of a parsed job spec (``jobspec.parse``/``verify`` output).

    With ``expected``, a spec of another kind is refused: a step of one kind never runs on
    the parameters of another.
    """
    if expected is not None and doc["kind"] != expected:
        raise InvalidInput(f"this step belongs to {expected} jobs, not to {str(doc['kind'])[:32]} jobs")
    return kind(doc["kind"]).params.from_params(doc["params"])


def check_covers(side: str, table: Mapping[str, object]) -> None:
    """Raise at import if a side's table does not cover exactly the kinds of :data:`KINDS`."""
    if set(table) != set(KINDS):
        missing, extra = sorted(set(KINDS) - set(table)), sorted(set(table) - set(KINDS))
        raise RuntimeError(f"{side} job table is out of step with pc_common.job_kinds "
                           f"(missing {missing}, unknown {extra})")
