"""Typed parameters and results of the ``Node.Step`` protocol: one table for both sides.

On the wire a step's header carries ``StepHeader.params`` and its end ``StepDone.summary``,
both ``map<string, string>``. Nobody reads those maps directly: each step declares a record
for its parameters and one for its result (:data:`STEPS`), and both sides go through

* coordinator: ``encode_params(step, HopParams(...))`` to fill a header (``JobContext.header``),
  ``decode_result(step, done)`` to read a node's answer;
* node: ``decode_params(header)`` to read a header, ``Record.encode()`` (``steps.common.done``)
  to answer.

Decoding refuses unknown keys, missing required keys and malformed values with
``InvalidInput`` naming the step and the key (never a value). Field types: ``str``, ``int``,
``bool`` ("1"/"0"), ``Literal[...]`` of strings, and ``tuple[str, ...]`` (a JSON list).
Results carry sizes and counts only, never identifiers or values.

Bulk data moves as named chunk streams (``DataChunk.stream``); the per-item stream names are
built by the functions at the end of this module, the fixed ones are given in each step's
``doc``. Job kinds (which steps a job runs) are in ``pc_common.job_kinds``.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass
from typing import ClassVar, Literal, Mapping, TypeVar

from pc_common.errors import InvalidInput

R = TypeVar("R", bound="Record")
_INT_RE = re.compile(r"-?[0-9]{1,19}\Z")
_MAX_LIST_BYTES = 64 * 1024


@dataclass(frozen=True)
class Record:
    """Base of step parameter and result records (frozen dataclasses of simple fields)."""

    _hints: ClassVar[dict[type, dict[str, object]]] = {}

    @classmethod
    def _types(cls) -> dict[str, object]:
        hints = Record._hints.get(cls)
        if hints is None:
            resolved = typing.get_type_hints(cls)
            hints = Record._hints[cls] = {f.name: resolved[f.name] for f in dataclasses.fields(cls)}
        return hints

    def encode(self) -> dict[str, str]:
        return {name: _encode(getattr(self, name)) for name in self._types()}

    @classmethod
    def decode(cls: type[R], values: Mapping[str, str], what: str) -> R:
        types = cls._types()
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise InvalidInput(f"{what}: unexpected key '{unknown[0][:32]}'")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                kwargs[f.name] = _decode(types[f.name], values[f.name], what, f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidInput(f"{what}: '{f.name}' is missing")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{what}: {exc}") from None


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)


def _decode(tp: object, raw: str, what: str, name: str) -> object:
    bad = InvalidInput(f"{what}: '{name}' is malformed")
    if tp is str:
        return raw
    if tp is bool:
        if raw not in ("0", "1"):
            raise bad
        return raw == "1"
    if tp is int:
        if not _INT_RE.match(raw):
            raise bad
        return int(raw)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if raw not in typing.get_args(tp):
            raise bad
        return raw
    if origin is tuple:
        try:
            items = json.loads(raw) if len(raw) <= _MAX_LIST_BYTES else None
        except ValueError:
            raise bad from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise bad
        return tuple(items)
    raise TypeError(f"unsupported field type {tp!r}")


# ----- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoParams(Record):
    """A step without parameters (everything it needs is in the signed job spec)."""


@dataclass(frozen=True)
class NoResult(Record):
    """A step that reports nothing but having finished."""


@dataclass(frozen=True)
class Admission(Record):
    admitted: Literal["yes", "pending"]     # "pending": a data officer must approve first
    role: Literal["", "requester"] = ""     # "requester": nothing to admit at the job's own node


@dataclass(frozen=True)
class Wiped(Record):
    wiped: int                              # working items deleted for the job


@dataclass(frozen=True)
class Count(Record):
    count: int                              # points in the step's output (or input, for a hop)


@dataclass(frozen=True)
class VerifyPrepared(Record):
    slots: int
    groups: int
    he: str                                 # the HE backend of the job's key


@dataclass(frozen=True)
class VerifyEvaluated(Record):
    subjects: int
    criteria: tuple[str, ...]               # criteria this provider returned ciphertexts for


@dataclass(frozen=True)
class CompareParams(Record):
    """verify.compare: what the requester checks against its own job state and the signed rule."""

    groups: int                             # households (N) in the comparison
    criteria: tuple[str, ...]               # one masked stream per criterion, in rule order


@dataclass(frozen=True)
class Rows(Record):
    rows: int                               # rows of the results file kept at the requester


@dataclass(frozen=True)
class HopParams(Record):
    shuffle: bool = False                   # re-shuffle the whole set (else stream in order)
    label: str = "hop"                      # progress label
    chain: str = ""                         # which chain of the job's plan ("": the requester's)


@dataclass(frozen=True)
class PsiFinished(Record):
    own: int                                # the requester's set size; the result stays there


@dataclass(frozen=True)
class FilterState(Record):
    """Which OPRF filter of a dataset a requester holds (epoch "" and version -1: none)."""

    epoch: str = ""
    version: int = -1


@dataclass(frozen=True)
class FilterSent(Record):
    epoch: str
    version: int
    kind: Literal["snapshot", "deltas"]     # also the name of the stream that carried it


@dataclass(frozen=True)
class BlindParams(Record):
    kind: Literal["snapshot", "deltas"] = "snapshot"    # the filter stream that follows


@dataclass(frozen=True)
class LookupBlinded(Record):
    queried: int
    filter_rows: int


@dataclass(frozen=True)
class Evaluated(Record):
    evaluated: int


@dataclass(frozen=True)
class Queried(Record):
    queried: int


@dataclass(frozen=True)
class QueryPrepared(Record):
    slots: int
    groups: int


@dataclass(frozen=True)
class QueryEvaluated(Record):
    subjects: int
    aggregates: tuple[str, ...]             # ciphertext streams returned (besides "subjects")
    noise_scales: tuple[str, ...] = ()      # DP: the discrete Laplace scale per aggregate (ct:noise:<name>)
    categories: tuple[str, ...] = ()        # GROUP BY a provider column: its declared categories (slots × these)


@dataclass(frozen=True)
class QueryReleaseParams(Record):
    """query.release: what the requester checks against its own job state and the signed SQL."""

    groups: int
    aggregates: tuple[str, ...]             # one masked stream per aggregate vector, in plan order
    decimal_sums: tuple[str, ...] = ()      # summed columns of type decimal (the catalog's, for formatting)
    categories: tuple[str, ...] = ()        # the provider group column's categories (groups × these)
    category_type: str = "text"             # that column's type in the catalog (for the sort order)


@dataclass(frozen=True)
class QueryReleased(Record):
    groups: int                             # groups decided (which were released stays at the requester)


@dataclass(frozen=True)
class PrivatePrepared(Record):
    rows: int                               # the requester's rows (blinded points) after its WHERE
    groups: int


@dataclass(frozen=True)
class PrivateEvaluated(Record):
    rows: int                               # the provider's distinct matching identifiers (m)
    positions: int                          # m + dummy positions: the length of every ct:<vector>
    aggregates: tuple[str, ...]             # ciphertext vectors, in plan order


@dataclass(frozen=True)
class PrivateReleaseParams(Record):
    """query_private.release: the provider's sizes and the plan's vectors, checked by the requester."""

    positions: int
    provider_rows: int
    aggregates: tuple[str, ...]
    decimal_sums: tuple[str, ...] = ()


# ----- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    params: type[Record]
    result: type[Record]
    doc: str                                # who runs it; streams in → out


STEPS: dict[str, Step] = {
    "job.admit": Step(NoParams, Admission, "every party: signature, policy, quota, approval"),
    "job.cleanup": Step(NoParams, Wiped, "every party: wipe the job's working data"),
    "verify.prepare": Step(NoParams, VerifyPrepared,
                           "requester: → pubctx, layout, sealed:<provider>, binding:<provider>"),
    "verify.evaluate": Step(NoParams, VerifyEvaluated, "provider: pubctx, sealed, binding → ct:<criterion>"),
    "verify.compare": Step(CompareParams, Rows,
                           "requester (bidirectional): masked:<criterion>, gc2, gc4 → gc1, gc3; results kept"
                           " at the node"),
    "psi.blind": Step(NoParams, Count, "requester: → out, binding (its SM2 signature of count and digest)"),
    "psi.hop": Step(HopParams, Count, "provider: in, binding → out, binding | sealed (last hop of a chain)"),
    "psi.own": Step(NoParams, Count, "provider: → out, binding (k-party) | sealed (two-party, to the requester)"),
    "psi.combine": Step(NoParams, Count, "combining provider (k-party): set:<provider> (sealed) → sealed"),
    "psi.finish": Step(NoParams, PsiFinished, "requester: double, provider (sealed) → (result to all) sealed"),
    "psi.learn": Step(NoParams, NoResult, "provider (result to all): indices (sealed) → results kept at the node"),
    "psi.kkrt_recv": Step(NoParams, PsiFinished, "requester, KKRT receiver (bidirectional): kkrt1, kkrt3, kkrt5 "
                          "(sealed to it) → kkrt2, kkrt4 (sealed to the provider); results kept at the node"),
    "psi.kkrt_send": Step(NoParams, Count, "provider, KKRT sender (bidirectional): kkrt2, kkrt4 (sealed to it) → "
                          "kkrt1, kkrt3, kkrt5 (sealed to the requester)"),
    "lookup.status": Step(NoParams, FilterState, "requester: which filter it holds"),
    "lookup.filter": Step(FilterState, FilterSent, "provider: → snapshot | deltas"),
    "lookup.blind": Step(BlindParams, LookupBlinded, "requester: snapshot | deltas → blinded"),
    "lookup.evaluate": Step(NoParams, Evaluated, "provider: in → out"),
    "lookup.finish": Step(NoParams, Queried, "requester: answers → results kept at the node"),
    "query.prepare": Step(NoParams, QueryPrepared,
                          "requester: → pubctx, layout, sealed:<provider>, binding:<provider>"),
    "query.evaluate": Step(NoParams, QueryEvaluated,
                           "provider: pubctx, sealed, binding → ct:subjects, ct:<aggregate> (BFV); under Paillier"
                           " → ct:pack<k> at the main provider, ct:pack<k> (masked) → ct:pack<k> (selected), ct:kept"
                           " at a further agency"),
    "query.release": Step(QueryReleaseParams, QueryReleased,
                          "requester (bidirectional): masked:threshold, masked:<aggregate> (BFV) or masked:pack<k>"
                          " (Paillier), gc2, gc4, release → gc1, gc3; results kept at the node"),
    "query_private.prepare": Step(NoParams, PrivatePrepared,
                                  "requester: → pubctx, sizes, sealed:<provider> (sizes and H(x)^a), "
                                  "binding:<provider>"),
    "query_private.evaluate": Step(NoParams, PrivateEvaluated,
                                   "provider: pubctx, sealed, binding → double, own (sealed to the requester), "
                                   "ct:<vector> over its positions"),
    "query_private.release": Step(PrivateReleaseParams, QueryReleased,
                                  "requester (bidirectional): double, own, masked:threshold, masked:<vector>, gc2,"
                                  " gc4, release → assignment, gc1, gc3; results kept at the node"),
}


def _step(name: str) -> Step:
    s = STEPS.get(name)
    if s is None:
        raise InvalidInput(f"unknown step '{name[:64]}'")
    return s


def encode_params(step: str, params: Record | None = None) -> dict[str, str]:
    """The header ``params`` of ``step`` (coordinator side); the record must be the step's."""
    expected = _step(step).params
    params = expected() if params is None else params
    if type(params) is not expected:
        raise TypeError(f"step '{step}' takes {expected.__name__}, not {type(params).__name__}")
    return params.encode()


def decode_params(header) -> Record:
    """The typed parameters of a received ``StepHeader`` (node side)."""
    return _step(header.step).params.decode(header.params, f"step '{header.step[:64]}'")


def decode_result(step: str, done) -> Record:
    """The typed result in a node's ``StepDone`` for ``step`` (coordinator side)."""
    return _step(step).result.decode(done.summary, f"the answer to step '{step}'")


# ----- names of per-item chunk streams --------------------------------------------------------------
def sealed_stream(provider: str) -> str:
    """verify.prepare → verify.evaluate: the sealed (slot, identifier) list for a provider."""
    return f"sealed:{provider}"


def binding_stream(provider: str) -> str:
    """verify.prepare → verify.evaluate: the requester's signature binding key and list."""
    return f"binding:{provider}"


def ciphertext_stream(criterion: str) -> str:
    """verify.evaluate: one ciphertext per slot for a criterion."""
    return f"ct:{criterion}"


def masked_stream(criterion: str) -> str:
    """verify.compare in: a criterion's masked values (BFV per slot, Paillier per group)."""
    return f"masked:{criterion}"


def gc_stream(round_no: int) -> str:
    """verify.compare: the garbled-circuit comparison's message of round 1..4 (odd: from the
    requester, even: from the coordinator)."""
    return f"gc{round_no}"
