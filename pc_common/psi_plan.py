"""The keyless plan of a PSI job: which node raises which stream, in what order, and who
combines — the one plan that the coordinator (to relay) and every node (to check what it is
asked to do against the signed job spec) both compute.

A job has a requester R and providers P1..Pm (m ≥ 1, in the spec's order). Streams are
*chains*: R's chain starts with H(x)^a and passes P1, …, Pm in order (the last one shuffles
for PSI-CA); in k-party PSI (m ≥ 2) each provider's set H(y)^bi also passes every other
provider (:func:`provider_chain_order`), each re-encrypting and reshuffling it. Every node
runs each of its hops once. The last hop of a chain seals its output to the chain's
destination: R for R's chain, the *combining provider* (P1) for providers' chains.

The :class:`Combiner` (run by that provider, keyless) keeps the rows present in all m fully
re-encrypted sets E(Yi) = H(y)^(b1…bm), pads them with random group elements to the smallest
set's size and shuffles. What it learns: every |Yi| and the sizes of intersections among the
providers' sets (it compares E(Yi) with E(Yj)); rows are group elements under keys it does
not hold all of, so not which records.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput
from pc_common.point_sets import intersect_rows, member_mask
from pc_common.wire import CHUNK_BYTES, POINT_LEN

__all__ = ["Chain", "Combiner", "Hop", "KKRT_FROM_RECEIVER", "KKRT_FROM_SENDER", "Plan", "chain_id", "kkrt_stream",
           "plan", "provider_chain_order"]

#: ``rng(n) -> n random bytes`` (the PSI cores' randomness seam).
Rng = Callable[[int], bytes]
#: Points per result chunk by default: one chunk of CHUNK_BYTES.
DEFAULT_CHUNK_POINTS = CHUNK_BYTES // POINT_LEN


#: KKRT16 (two-party): the rounds each party sends, one sealed chunk stream ``kkrt<round>`` each.
KKRT_FROM_SENDER = (1, 3, 5)
KKRT_FROM_RECEIVER = (2, 4)


def kkrt_stream(round_no: int) -> str:
    """The stream name of KKRT message ``round_no`` (bound into each chunk's sealing)."""
    return f"kkrt{round_no}"


def provider_chain_order(owner: int, n_providers: int) -> list[int]:
    """Which providers (0-based) raise provider ``owner``'s set, in relay order."""
    if not 0 <= owner < n_providers:
        raise InvalidInput("provider index out of range")
    return [(owner + k) % n_providers for k in range(1, n_providers)]


def chain_id(owner: str) -> str:
    """The name of the chain that starts with ``owner``'s set (signed into every stream of it)."""
    return f"chain:{owner}"


@dataclass(frozen=True)
class Hop:
    node: str
    shuffle: bool          # re-shuffle the whole set (else stream in order)


@dataclass(frozen=True)
class Chain:
    id: str
    owner: str             # whose set it starts with (stage 1: under the owner's key)
    hops: tuple[Hop, ...]
    destination: str       # who receives the last hop's output, sealed

    def position(self, node: str) -> int | None:
        return next((i for i, h in enumerate(self.hops) if h.node == node), None)

    def producer(self, position: int) -> str:
        """Who produced the stream that hop ``position`` raises (and signed it)."""
        return self.owner if position == 0 else self.hops[position - 1].node

    @property
    def final_stage(self) -> int:
        """Keys on the chain's output: the owner's and every hop's."""
        return len(self.hops) + 1


@dataclass(frozen=True)
class Plan:
    requester: str
    providers: tuple[str, ...]
    chains: tuple[Chain, ...]          # R's chain first, then each provider's (k-party)
    combiner: str | None               # the provider that combines (k-party), else None

    def chain(self, cid: str) -> Chain | None:
        return next((c for c in self.chains if c.id == cid), None)

    @property
    def requester_chain(self) -> Chain:
        return self.chains[0]


def plan(requester: str, providers: list[str] | tuple[str, ...], cardinality_only: bool) -> Plan:
    """The job's chains (see the module docstring); a pure function of the signed spec."""
    providers = tuple(providers)
    m = len(providers)
    if m < 1:
        raise InvalidInput("PSI needs at least one provider")
    rchain = Chain(chain_id(requester), requester,
                   tuple(Hop(p, cardinality_only and i == m - 1) for i, p in enumerate(providers)), requester)
    if m == 1:
        return Plan(requester, providers, (rchain,), None)
    combiner = providers[0]
    chains = [rchain] + [Chain(chain_id(owner), owner, tuple(Hop(providers[j], True)
                                                               for j in provider_chain_order(i, m)), combiner)
                         for i, owner in enumerate(providers)]
    return Plan(requester, providers, tuple(chains), combiner)


def _rows(chunk: bytes, count: int | None) -> np.ndarray:
    """A point chunk as an owned ``(n, 32)`` array; ``count`` must agree with its length."""
    if not isinstance(chunk, (bytes, bytearray, memoryview)):
        raise CryptoError("point chunk must be bytes")
    size = memoryview(chunk).nbytes
    if size % POINT_LEN:
        raise CryptoError("point chunk length is not a multiple of 32 bytes")
    if count is not None and count != size // POINT_LEN:
        raise CryptoError("point chunk length does not match its count")
    return np.frombuffer(bytes(chunk), dtype=np.uint8).reshape(-1, POINT_LEN)


class Combiner:
    """Intersects the m fully re-encrypted provider sets and hands R the result, shuffled.

    Curve-agnostic (rows of 32 bytes); holds no key. Feed chunks with ``accept(i, chunk)``;
    ``result_chunks`` closes every set and yields the common rows in random order.
    """

    def __init__(self, n_sets: int, rng: Rng | None = None) -> None:
        if not isinstance(n_sets, int) or n_sets < 1:
            raise InvalidInput("the combiner needs at least one set")
        self._parts: list[list[np.ndarray]] = [[] for _ in range(n_sets)]
        self._sizes = [0] * n_sets
        self._rng = rng or secrets.token_bytes
        self._result: np.ndarray | None = None

    @property
    def n_sets(self) -> int:
        return len(self._parts)

    def accept(self, set_index: int, chunk: bytes, count: int | None = None) -> None:
        if self._result is not None:
            raise FailedPrecondition("the combiner has already produced its result")
        if not isinstance(set_index, int) or not 0 <= set_index < self.n_sets:
            raise InvalidInput("set index out of range")
        pts = _rows(chunk, count)
        self._parts[set_index].append(pts)
        self._sizes[set_index] += len(pts)

    def set_sizes(self) -> list[int]:
        """Rows received per set (the combiner learns these)."""
        return list(self._sizes)

    def _combine(self) -> np.ndarray:
        if self._result is None:
            sets = [np.concatenate(p) if p else np.empty((0, POINT_LEN), dtype=np.uint8) for p in self._parts]
            common = intersect_rows(sets)
            # A shuffle as unpredictable as rng: argsort of random 64-bit keys.
            keys = np.frombuffer(self._rng(8 * len(common)), dtype=np.uint64)
            self._result = common[np.argsort(keys, kind="stable")] if len(common) > 1 else common
            self._parts = [[] for _ in self._parts]
        return self._result

    def pad_to_smallest(self, rerandomise: Callable[[np.ndarray], np.ndarray]) -> int:
        """Combine, then fill the common rows up to the smallest set's size with that set's other
        rows passed through ``rerandomise`` (raised to a fresh random scalar: group elements that
        match nothing anyone holds), and reshuffle. Whoever sees the result's length learns only
        the smallest set's size, and its reader cannot tell filler from non-matching rows.
        Returns the padded size."""
        if self._result is not None:
            raise FailedPrecondition("the combiner has already produced its result")
        sets = [np.concatenate(p) if p else np.empty((0, POINT_LEN), dtype=np.uint8) for p in self._parts]
        common = intersect_rows(sets)
        smallest = min(sets, key=len)
        rest = smallest[~member_mask(smallest, common)] if len(common) else smallest
        extra = np.asarray(rerandomise(np.ascontiguousarray(rest)), dtype=np.uint8).reshape(-1, POINT_LEN)
        if len(extra) != len(rest):
            raise InvalidInput("re-randomisation changed the number of rows")
        rows = np.concatenate([common, extra])
        keys = np.frombuffer(self._rng(8 * len(rows)), dtype=np.uint64)
        self._result = rows[np.argsort(keys, kind="stable")] if len(rows) > 1 else rows
        self._parts = [[] for _ in self._parts]
        return len(rows)

    def result_size(self) -> int:
        return len(self._combine())

    def result_chunks(self, chunk_points: int = DEFAULT_CHUNK_POINTS) -> Iterator[bytes]:
        if not isinstance(chunk_points, int) or chunk_points < 1:
            raise InvalidInput("chunk size must be a positive integer")
        rows = self._combine()
        for lo in range(0, len(rows), chunk_points):
            yield np.ascontiguousarray(rows[lo:lo + chunk_points]).tobytes()
