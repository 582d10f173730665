"""Balanced ECDH-PSI and PSI-CA between a requester A and a provider B: pure protocol cores.

Flow (each arrow is a stream of point chunks, see :mod:`pc_node.psi.encoding`)::

    A: blinded_chunks()        H(x)^a, shuffled by A        ──►  B: reencrypt(chunk)
    A: accept_double(chunk)    (H(x)^a)^b, A's order        ◄──  B  (same order, chunk by chunk)
    A: accept_provider(chunk)  H(y)^b, shuffled by B        ◄──  B: own_chunks()
    A: finish() -> X ∩ Y   or   cardinality() -> |X ∩ Y|

PSI-CA (``cardinality_only=True`` on both sides): B buffers every re-encrypted value and
returns them in a fresh random order over the *whole* set (``accept_blinded`` then
``shuffled_reencrypted_chunks``), so A can match counts but not map a match back to an
identifier. Result to both parties: A sends ``provider_indices()`` — positions in B's
shuffled list that matched — and B calls ``learn_intersection`` (the node steps use the
fixed-length ``provider_bitmap`` / ``learn_from_bitmap`` form, sealed to B).

What each party learns (semi-honest): A — X ∩ Y (or only |X ∩ Y|) and |Y|; B — |X|
(and X ∩ Y with the result-to-both option). Neither sees the other's non-matching identifiers.
Identifiers are normalised and de-duplicated first (:func:`~pc_node.psi.encoding.normalise_ids`).

The sessions hold no network state; the transport calls them chunk by chunk. EC work inside
one call is spread over all cores by the backend.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput

from .curve import EcBackend, resolve_backend
from .encoding import (
    POINT_LEN,
    check_chunk_size,
    decode_indices,
    decode_points,
    encode_indices,
    normalise_ids,
    split_chunks,
)
from pc_common.point_sets import SortedPoints
from .randomness import Rng, random_permutation, system_rng

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_DOMAIN",
    "ProviderSession",
    "ReencryptHop",
    "RequesterSession",
]

#: Hash domain used unless the caller passes one; jobs should pass a job-specific domain
#: (e.g. ``b"pc.psi.v1|job=<job id>"``) so that values from different jobs never relate.
DEFAULT_DOMAIN = b"pc.psi.v1"
#: 8192 points = 256 KiB per chunk: far below gRPC's 4 MiB message limit.
DEFAULT_CHUNK = 8192


class _Party:
    """Common state: normalised ids, the secret scalar, the backend, own shuffled order."""

    def __init__(self, ids: Iterable[str], key: bytes | None, rng: Rng | None,
                 domain: bytes, backend: EcBackend | str | None, curve: str) -> None:
        self.backend = resolve_backend(backend, curve)
        if self.backend.curve != curve:
            raise InvalidInput("backend does not match the requested curve")
        self.curve = curve
        self._rng = rng or system_rng
        self._ids = normalise_ids(ids)
        self._key = (self.backend.check_scalar(key) if key is not None
                     else self.backend.random_scalar(self._rng))
        if not isinstance(domain, (bytes, bytearray)) or not domain:
            raise InvalidInput("hash domain must be non-empty bytes")
        self._domain = bytes(domain)
        self._perm = random_permutation(len(self._ids), self._rng)

    @property
    def count(self) -> int:
        """Number of distinct normalised identifiers this party holds."""
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """The normalised, de-duplicated identifiers (this party's own data)."""
        return list(self._ids)

    def hop(self, shuffle: bool) -> ReencryptHop:
        """A fresh re-encryption stage under this party's key (k-party relays, PSI-CA)."""
        return ReencryptHop(self._key, self.backend, shuffle=shuffle, rng=self._rng)

    def _own_chunks(self, order: np.ndarray, chunk_size: int) -> Iterator[bytes]:
        check_chunk_size(chunk_size)
        # One chunk ahead: with a backend that works elsewhere, chunk k is multiplied there
        # while chunk k + 1 is hashed here.
        ahead = None
        for lo in range(0, len(order), chunk_size):
            ids = [self._ids[i] for i in order[lo:lo + chunk_size]]
            later = self.backend.scalarmult_later(self._key, self.backend.hash_to_points(ids, self._domain))
            if ahead is not None:
                yield ahead().tobytes()
            ahead = later
        if ahead is not None:
            yield ahead().tobytes()

    def __repr__(self) -> str:  # never shows ids or the key
        return f"<{type(self).__name__} n={self.count} curve={self.curve} backend={self.backend.name}>"


class ReencryptHop:
    """Raise a stream of points to one party's secret scalar.

    ``shuffle=False``: :meth:`process` maps each chunk to its re-encryption, same order
    (streams straight through). ``shuffle=True``: :meth:`accept` re-encrypts and buffers every
    chunk; :meth:`output_chunks` then yields the whole set in a fresh random order.
    """

    def __init__(self, key: bytes, backend: EcBackend, *, shuffle: bool, rng: Rng | None = None) -> None:
        self._key = backend.check_scalar(key)
        self._backend = backend
        self.shuffle = shuffle
        self._rng = rng or system_rng
        self._parts: list = []          # scalarmult_later results, fetched in output_chunks
        self.received = 0
        self._closed = False

    def process(self, chunk: bytes, count: int | None = None) -> bytes:
        return self.process_later(chunk, count)()

    def process_later(self, chunk: bytes, count: int | None = None):
        """:meth:`process` for a caller that needs the bytes only later (a node's hop step holds
        its outputs until the stream is signed): calling the result gives them; with a backend
        that works elsewhere the chunk is multiplied while the next ones arrive."""
        if self.shuffle:
            raise FailedPrecondition("a shuffling stage returns values only after the whole set")
        pts = decode_points(chunk, count)
        self.received += len(pts)
        later = self._backend.scalarmult_later(self._key, pts)
        return lambda: later().tobytes()

    def accept(self, chunk: bytes, count: int | None = None) -> None:
        if not self.shuffle:
            raise FailedPrecondition("an in-order stage returns each chunk from process()")
        if self._closed:
            raise FailedPrecondition("the stage has already produced its output")
        pts = decode_points(chunk, count)
        self.received += len(pts)
        self._parts.append(self._backend.scalarmult_later(self._key, pts))

    def output_chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        if not self.shuffle:
            raise FailedPrecondition("an in-order stage returns each chunk from process()")
        check_chunk_size(chunk_size)
        if not self._closed:
            allpts = (np.concatenate([later() for later in self._parts]) if self._parts
                      else np.empty((0, POINT_LEN), dtype=np.uint8))
            self._parts = [allpts[random_permutation(len(allpts), self._rng)]]
            self._closed = True
        return split_chunks(self._parts[0], chunk_size)


class RequesterSession(_Party):
    """Party A: learns X ∩ Y (or |X ∩ Y| with ``cardinality_only``).

    Also the requester core of k-party PSI (:mod:`pc_node.psi.multiparty`): there
    ``accept_double`` takes A's values after every provider's key, and ``accept_provider``
    takes the combined providers' set.
    """

    def __init__(self, ids: Iterable[str], key: bytes | None = None, rng: Rng | None = None, *,
                 cardinality_only: bool = False, domain: bytes = DEFAULT_DOMAIN,
                 backend: EcBackend | str | None = None, curve: str = "x25519") -> None:
        super().__init__(ids, key, rng, domain, backend, curve)
        self.cardinality_only = bool(cardinality_only)
        self._double = np.empty((self.count, POINT_LEN), dtype=np.uint8)
        self._double_n = 0
        self._provider_parts: list = []  # scalarmult_later results, fetched in _compute
        self._provider_n = 0
        self._mask: np.ndarray | None = None
        self._provider_all: np.ndarray | None = None

    # -- step 1
    def blinded_chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """H(x)^a for every own identifier, in A's secret random order (re-iterable)."""
        return self._own_chunks(self._perm, chunk_size)

    # -- step 2
    def accept_double(self, chunk: bytes, count: int | None = None) -> None:
        """The next chunk of (H(x)^a)^b, in the order A sent them (B-shuffled for PSI-CA)."""
        self._check_open()
        pts = decode_points(chunk, count)
        if self._double_n + len(pts) > self.count:
            raise CryptoError("more re-encrypted values arrived than were sent")
        self.backend.validate_points(pts)
        self._double[self._double_n:self._double_n + len(pts)] = pts
        self._double_n += len(pts)

    def accept_provider(self, chunk: bytes, count: int | None = None) -> None:
        """The next chunk of B's H(y)^b; raised to ``a`` here."""
        self._check_open()
        pts = decode_points(chunk, count)
        self._provider_parts.append(self.backend.scalarmult_later(self._key, pts))
        self._provider_n += len(pts)

    # -- results
    def progress(self) -> dict[str, int]:
        return {"own": self.count, "double_received": self._double_n,
                "provider_received": self._provider_n}

    def _compute(self) -> np.ndarray:
        if self._mask is None:
            if self._double_n != self.count:
                raise FailedPrecondition("not all re-encrypted values have arrived")
            parts = [later() for later in self._provider_parts]
            provider = np.concatenate(parts) if parts else np.empty((0, POINT_LEN), dtype=np.uint8)
            self._provider_parts = []
            self._provider_all = provider
            self._mask = SortedPoints(provider).contains(self._double)
        return self._mask

    def _check_open(self) -> None:
        if self._mask is not None:
            raise FailedPrecondition("the session has already finished")

    def finish(self) -> list[str]:
        """X ∩ Y as A's normalised identifiers, in A's input order."""
        if self.cardinality_only:
            raise FailedPrecondition("this session was opened for the intersection size only")
        mask = self._compute()
        return [self._ids[i] for i in np.sort(self._perm[mask])]

    def cardinality(self) -> int:
        """|X ∩ Y|."""
        return int(self._compute().sum())

    @property
    def provider_count(self) -> int:
        """|Y| as seen so far (A learns it in any case)."""
        return self._provider_n

    def provider_indices(self) -> bytes:
        """Result-to-both option: positions in B's shuffled list that are in X ∩ Y (uint32s).

        Sound only against a semi-honest A: B cannot check the list (see docs/psi.md).
        """
        if self.cardinality_only:
            raise FailedPrecondition("the intersection is not revealed in cardinality-only mode")
        self._compute()
        assert self._provider_all is not None
        hits = SortedPoints(self._double).contains(self._provider_all)
        return encode_indices(np.nonzero(hits)[0])


    def provider_bitmap(self) -> bytes:
        """Result-to-both option as a bitmap over B's sent list (bit i, little-endian within each
        byte: position i is in X ∩ Y). Its length, ⌈|Y| / 8⌉ bytes, says nothing about |X ∩ Y|,
        so the list can travel sealed without its size telling the relay the intersection size."""
        if self.cardinality_only:
            raise FailedPrecondition("the intersection is not revealed in cardinality-only mode")
        self._compute()
        assert self._provider_all is not None
        hits = SortedPoints(self._double).contains(self._provider_all)
        return np.packbits(hits.astype(np.uint8), bitorder="little").tobytes()


class ProviderSession(_Party):
    """Party B: re-encrypts A's values and sends its own; learns |X| (and X ∩ Y if told)."""

    def __init__(self, ids: Iterable[str], key: bytes | None = None, rng: Rng | None = None, *,
                 cardinality_only: bool = False, domain: bytes = DEFAULT_DOMAIN,
                 backend: EcBackend | str | None = None, curve: str = "x25519") -> None:
        super().__init__(ids, key, rng, domain, backend, curve)
        self.cardinality_only = bool(cardinality_only)
        self._stage = self.hop(shuffle=self.cardinality_only)
        self._sent_order: np.ndarray | None = None

    @property
    def requester_count(self) -> int:
        """|X| as seen so far (what B learns)."""
        return self._stage.received

    def reencrypt(self, chunk: bytes, count: int | None = None) -> bytes:
        """(H(x)^a)^b for one chunk, same order (not in cardinality-only mode)."""
        if self.cardinality_only:
            raise FailedPrecondition("in cardinality-only mode use accept_blinded() and "
                                     "shuffled_reencrypted_chunks()")
        return self._stage.process(chunk, count)

    def accept_blinded(self, chunk: bytes, count: int | None = None) -> None:
        """PSI-CA: re-encrypt and keep one chunk of A's values."""
        if not self.cardinality_only:
            raise FailedPrecondition("accept_blinded() is for cardinality-only sessions")
        self._stage.accept(chunk, count)

    def shuffled_reencrypted_chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """PSI-CA: every re-encrypted value of A, in a fresh random order over the whole set."""
        if not self.cardinality_only:
            raise FailedPrecondition("shuffled re-encryption is for cardinality-only sessions")
        return self._stage.output_chunks(chunk_size)

    def own_chunks(self, chunk_size: int = DEFAULT_CHUNK, shuffle: bool = True) -> Iterator[bytes]:
        """H(y)^b for every own identifier, in B's secret random order (or input order)."""
        order = self._perm if shuffle else np.arange(self.count, dtype=np.int64)
        self._sent_order = order
        return self._own_chunks(order, chunk_size)

    def learn_intersection(self, indices: bytes, count: int | None = None) -> list[str]:
        """Result-to-both option: map A's positions in B's sent list back to B's identifiers."""
        if self._sent_order is None:
            raise FailedPrecondition("own values have not been sent yet")
        idx = decode_indices(indices, self.count, count)
        return [self._ids[i] for i in np.sort(self._sent_order[idx])]

    def learn_from_bitmap(self, bitmap: bytes) -> list[str]:
        """Result-to-both option: A's bitmap over B's sent list (see ``provider_bitmap``)."""
        if self._sent_order is None:
            raise FailedPrecondition("own values have not been sent yet")
        if len(bitmap) != (self.count + 7) // 8:
            raise InvalidInput("the intersection bitmap does not match the provider's set size")
        bits = np.unpackbits(np.frombuffer(bytes(bitmap), dtype=np.uint8), bitorder="little")
        if bits[self.count:].any():
            raise InvalidInput("the intersection bitmap marks positions beyond the provider's set")
        idx = np.nonzero(bits[:self.count])[0]
        return [self._ids[i] for i in np.sort(self._sent_order[idx])]
