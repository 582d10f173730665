"""The keyless part of k-party PSI that the coordinator runs: relay order and the combiner.

In k-party PSI (requester R, providers P1..Pm, m ≥ 2; see ``pc_node.psi.multiparty``) each
provider's set H(y)^bi travels through every other provider, who re-encrypts and reshuffles
it; :func:`provider_chain_order` says in which order. The fully re-encrypted sets
E(Yi) = H(y)^(b1…bm) then meet in the :class:`Combiner`, which keeps the rows present in all
of them and hands R the result, shuffled. Neither needs a key, so both live here, importable
by the coordinator and by the node's in-process driver alike.

What the combiner learns: every |Yi| and the size of the providers' common set (it compares
E(Yi) with E(Yj)); rows are group elements under keys it does not hold.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import numpy as np

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput
from pc_common.point_sets import intersect_rows
from pc_common.wire import CHUNK_BYTES, POINT_LEN

__all__ = ["Combiner", "provider_chain_order"]

#: ``rng(n) -> n random bytes`` (the PSI cores' randomness seam).
Rng = Callable[[int], bytes]
#: Points per result chunk by default: one chunk of CHUNK_BYTES.
DEFAULT_CHUNK_POINTS = CHUNK_BYTES // POINT_LEN


def provider_chain_order(owner: int, n_providers: int) -> list[int]:
    """Which providers (0-based) raise provider ``owner``'s set, in relay order."""
    if not 0 <= owner < n_providers:
        raise InvalidInput("provider index out of range")
    return [(owner + k) % n_providers for k in range(1, n_providers)]


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

    def result_size(self) -> int:
        return len(self._combine())

    def result_chunks(self, chunk_points: int = DEFAULT_CHUNK_POINTS) -> Iterator[bytes]:
        if not isinstance(chunk_points, int) or chunk_points < 1:
            raise InvalidInput("chunk size must be a positive integer")
        rows = self._combine()
        for lo in range(0, len(rows), chunk_points):
            yield np.ascontiguousarray(rows[lo:lo + chunk_points]).tobytes()
