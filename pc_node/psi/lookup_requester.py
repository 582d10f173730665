"""The requester's side of the query-private lookup: filter copy, blinded queries, local matching.

See :mod:`pc_node.psi.lookup` for the protocol and who learns what.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pc_common.errors import (
    CryptoError,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
)
from pc_common.gm import sm4_gcm_decrypt

from .curve import EcBackend, resolve_backend
from .encoding import (
    POINT_LEN,
    check_chunk_size,
    decode_points,
    normalise_id,
    normalise_ids,
    split_chunks,
)
from .lookup_format import (
    DELTA_MAGIC,
    MAX_LABEL,
    SNAPSHOT_MAGIC,
    check_params,
    decode_label,
    digest16,
    int_field,
    label_aad,
    label_key,
    record_len,
    tags_from_bytes,
    tags_from_digest,
    unpack,
)
from .randomness import Rng, system_rng
from .x25519 import blinding_pair


# --------------------------------------------------------------------------- requester
@dataclass
class LookupResult:
    """Which queried identifiers are in the provider's set, and their labels (labelled mode)."""

    members: list[str]
    labels: dict[str, bytes] = field(default_factory=dict)

    def __contains__(self, identifier: str) -> bool:
        return normalise_id(identifier) in set(self.members)


class LookupRequester:
    """The asker's side: holds the filter (kept current with deltas) and runs queries."""

    def __init__(self, snapshot: bytes, *, backend: EcBackend | str | None = None) -> None:
        header, body = unpack(SNAPSHOT_MAGIC, snapshot)
        if header.get("kind") != "snapshot" or header.get("curve") != "x25519":
            raise CryptoError("lookup snapshot header is malformed")
        epoch = header.get("epoch")
        try:
            self.tag_bytes = int_field(header, "tag_bytes", 4, 8)
            self.label_size = int_field(header, "label_size", 0, MAX_LABEL)
            check_params(epoch, self.tag_bytes, self.label_size)
            self.domain = bytes.fromhex(header.get("domain", ""))
        except (InvalidInput, ValueError, TypeError):
            raise CryptoError("lookup snapshot header is malformed") from None
        self.epoch: str = epoch
        self.version = int_field(header, "version", 0, 2**62)
        count = int_field(header, "count", 0, 2**40)
        rl = record_len(self.label_size)
        if len(body) != count * (self.tag_bytes + rl):
            raise CryptoError("lookup snapshot length does not match its count")
        self.backend = resolve_backend(backend, "x25519")
        self._tags = tags_from_bytes(body[:count * self.tag_bytes], count, self.tag_bytes)
        if count > 1 and (self._tags[1:] < self._tags[:-1]).any():
            raise CryptoError("lookup snapshot is not sorted")
        self._labels = np.frombuffer(body[count * self.tag_bytes:], dtype=np.uint8).reshape(count, rl).copy()

    @property
    def count(self) -> int:
        return len(self._tags)

    @property
    def labelled(self) -> bool:
        return self.label_size > 0

    def apply_delta(self, delta: bytes) -> None:
        """Bring the filter from its version to the next (FailedPrecondition if out of step)."""
        header, body = unpack(DELTA_MAGIC, delta)
        if header.get("kind") != "delta" or header.get("epoch") != self.epoch:
            raise FailedPrecondition("delta is for another key epoch; fetch a fresh filter")
        if (int_field(header, "tag_bytes", 4, 8) != self.tag_bytes
                or int_field(header, "label_size", 0, MAX_LABEL) != self.label_size):
            raise CryptoError("lookup delta header is malformed")
        frm = int_field(header, "from_version", 0, 2**62)
        to = int_field(header, "to_version", 0, 2**62)
        n_rem = int_field(header, "removed", 0, 2**40)
        n_add = int_field(header, "added", 0, 2**40)
        if frm != self.version:
            raise FailedPrecondition("lookup filter is out of step with this delta")
        if to not in (frm, frm + 1):
            raise CryptoError("lookup delta header is malformed")
        tb, rl = self.tag_bytes, record_len(self.label_size)
        if len(body) != (n_rem + n_add) * (tb + rl):
            raise CryptoError("lookup delta length does not match its counts")
        off = 0
        rem_tags = tags_from_bytes(body[off:off + n_rem * tb], n_rem, tb)
        off += n_rem * tb
        rem_recs = np.frombuffer(body[off:off + n_rem * rl], dtype=np.uint8).reshape(n_rem, rl)
        off += n_rem * rl
        add_tags = tags_from_bytes(body[off:off + n_add * tb], n_add, tb)
        off += n_add * tb
        add_recs = np.frombuffer(body[off:off + n_add * rl], dtype=np.uint8).reshape(n_add, rl)
        tags, labels = self._tags, self._labels
        drop: list[int] = []
        taken: set[int] = set()
        for t, rec in zip(rem_tags, rem_recs):
            lo = int(np.searchsorted(tags, t, side="left"))
            hi = int(np.searchsorted(tags, t, side="right"))
            pos = next((i for i in range(lo, hi)
                        if i not in taken and (not rl or np.array_equal(labels[i], rec))), None)
            if pos is None:
                raise CryptoError("lookup delta removes a row the filter does not have")
            taken.add(pos)
            drop.append(pos)
        tags = np.delete(tags, drop)
        labels = np.delete(labels, drop, axis=0)
        order = np.argsort(add_tags, kind="stable")
        add_tags, add_recs = add_tags[order], add_recs[order]
        at = np.searchsorted(tags, add_tags, side="right")
        self._tags = np.insert(tags, at, add_tags)
        self._labels = np.insert(labels, at, add_recs, axis=0)
        self.version = to

    def query(self, ids: Iterable[str], rng: Rng | None = None) -> LookupQuery:
        """Prepare blinded queries for ``ids`` (normalised, de-duplicated)."""
        return LookupQuery(self, normalise_ids(ids), rng)

    # used by LookupQuery
    def _match(self, f_values: np.ndarray, ids: list[str]) -> LookupResult:
        if not len(ids):
            return LookupResult([], {})
        d16 = digest16(f_values)
        tags = tags_from_digest(d16, self.tag_bytes)
        lo = np.searchsorted(self._tags, tags, side="left")
        hi = np.searchsorted(self._tags, tags, side="right")
        hit = hi > lo
        if not self.labelled:
            return LookupResult([ids[i] for i in np.nonzero(hit)[0]], {})
        members: list[str] = []
        labels: dict[str, bytes] = {}
        raw = f_values.tobytes()
        for i in np.nonzero(hit)[0]:
            key = label_key(raw[32 * i:32 * i + 32])
            aad = label_aad(self.epoch, int(tags[i]), self.tag_bytes)
            for pos in range(int(lo[i]), int(hi[i])):
                try:
                    plain = sm4_gcm_decrypt(key, self._labels[pos].tobytes(), aad)
                    payload = decode_label(plain)
                except IntegrityError:
                    continue  # a tag collision with another row: not ours
                members.append(ids[i])
                labels[ids[i]] = payload
                break
        return LookupResult(members, labels)


class LookupQuery:
    """One online query: ``blinded()`` → provider's ``evaluate`` → ``finish(response)``."""

    def __init__(self, requester: LookupRequester, ids: list[str], rng: Rng | None) -> None:
        self._req = requester
        self.ids = ids
        rng = rng or system_rng
        n = len(ids)
        rs = bytearray(32 * n)
        ss = bytearray(32 * n)
        for i in range(n):
            r, s = blinding_pair(rng)
            rs[32 * i:32 * i + 32] = r
            ss[32 * i:32 * i + 32] = s
        self._r = np.frombuffer(bytes(rs), dtype=np.uint8).reshape(n, 32)
        self._s = np.frombuffer(bytes(ss), dtype=np.uint8).reshape(n, 32)
        backend = requester.backend
        points = backend.hash_to_points(ids, requester.domain)
        self._blinded = backend.scalarmult_each(self._r, points) if n else np.empty((0, POINT_LEN), np.uint8)
        self._answers: list[np.ndarray] = []
        self._n_answers = 0

    @property
    def count(self) -> int:
        return len(self.ids)

    def blinded(self) -> bytes:
        """The whole request as one message (32 bytes per identifier)."""
        return self._blinded.tobytes()

    def blinded_chunks(self, chunk_size: int = 8192) -> Iterable[bytes]:
        check_chunk_size(chunk_size)
        return split_chunks(self._blinded, chunk_size)

    def accept(self, chunk: bytes, count: int | None = None) -> None:
        """One chunk of the provider's answer, in request order."""
        pts = decode_points(chunk, count)
        if self._n_answers + len(pts) > self.count:
            raise CryptoError("more answers than questions")
        self._answers.append(np.array(pts))
        self._n_answers += len(pts)

    def finish(self, response: bytes | None = None) -> LookupResult:
        """Unblind the answers and check them against the filter."""
        if response is not None:
            self.accept(response)
        if self._n_answers != self.count:
            raise FailedPrecondition("not all answers have arrived")
        if not self.count:
            return LookupResult([], {})
        answers = np.concatenate(self._answers)
        f_values = self._req.backend.scalarmult_each(self._s, answers)
        return self._req._match(f_values, self.ids)
