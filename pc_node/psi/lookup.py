"""Unbalanced, query-private lookup (匿踪查询): OPRF + a compact filter held by the requester.

Offline, once per *key epoch*, the provider evaluates ``F(y) = X25519(b, H(y))`` for every
identifier of its key column and publishes a **filter**: the sorted ``tag_bytes``-byte
prefixes of ``SM3("pc.lookup.tag" || F(y))`` (8 MB for 1,000,000 records at 8 bytes). When the
dataset changes it publishes a **delta** (tags removed and added) instead of a new filter.

Online, for each identifier ``x`` the requester draws a blinding pair ``(r, s)`` with
``s·r ≡ 1`` (see :func:`~pc_node.psi.x25519.blinding_pair`), sends ``X25519(r, H(x))``; the
provider answers ``X25519(b, ·)`` for each point (it learns only how many); the requester
unblinds with ``s`` to get ``F(x)`` and checks the tag locally. A uniformly random point hides
``x`` perfectly from the provider; the requester learns ``F`` only on identifiers it asked.

**Labelled variant**: each row also carries ``SM4-GCM(K, len || payload || padding)`` with
``K = SM3("pc.lookup.label" || F(y))[:16]`` and the tag and epoch as associated data — only
someone who evaluated F on ``y`` can open it. Labels are shipped inside the filter (the
requester must not ask for "row i", which would reveal the hit); payloads are padded to one
``label_size`` so lengths leak nothing. A tag false positive fails authentication, so labelled
lookups have no false positives.

False-positive rate of an unlabelled lookup for an identifier not in the set: about
``N / 2^(8·tag_bytes)`` — 5.4e-14 for N = 1,000,000 and 8-byte tags (the default),
3.6e-9 for 6 bytes, 2.3e-4 for 4 bytes.

Who learns what: provider — the number of identifiers queried (and when); requester — for each
identifier it queried, whether it is in the set (and its label), plus N and, through deltas,
how many rows changed. Once the requester has evaluated ``F(x)`` it can re-check ``x`` against
later deltas of the same epoch without asking: rotate the epoch (new key) to bound that.
Identifiers can be guessed by querying many of them: the node steps (``pc_node.steps.lookup``)
seal the filter and the answers to the requester node, evaluate only the points the requester
signed, once per job, charge each against the quota and cap them per requester and key epoch,
with one key per requester and epoch (``pc_node.steps.lookup_epochs``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from pc_common.errors import (
    FailedPrecondition,
    InvalidInput,
)
from pc_common.gm import sm4_gcm_encrypt

from .curve import EcBackend, resolve_backend
from .encoding import (
    decode_points,
    normalise_id,
    normalise_ids,
)
from .lookup_format import (
    BUILD_BATCH,
    DELTA_MAGIC,
    LOOKUP_DOMAIN,
    SNAPSHOT_MAGIC,
    check_params,
    digest16,
    encode_label,
    label_aad,
    label_key,
    pack,
    record_len,
    tags_from_digest,
    tags_to_bytes,
)
from .randomness import Rng, system_rng

__all__ = [
    "LOOKUP_DOMAIN",
    "LookupProvider",
    "LookupQuery",
    "LookupRequester",
    "LookupResult",
]


# --------------------------------------------------------------------------- provider
class LookupProvider:
    """The data holder's side: OPRF key, filter, deltas and blind evaluation.

    Build with :meth:`build` (offline, once per epoch; the caller keeps the provider). Ship
    :meth:`snapshot` to requesters once per epoch and the bytes returned by
    :meth:`apply_changes` afterwards. Answer online queries with :meth:`evaluate`.
    """

    def __init__(self, *, epoch: str, key: bytes | None = None, domain: bytes = LOOKUP_DOMAIN,
                 tag_bytes: int = 8, label_size: int = 0, backend: EcBackend | str | None = None,
                 rng: Rng | None = None) -> None:
        check_params(epoch, tag_bytes, label_size)
        self.backend = resolve_backend(backend, "x25519")
        if self.backend.curve != "x25519":
            raise InvalidInput("lookups run on the x25519 group")
        self._rng = rng or system_rng
        self.epoch = epoch
        self.domain = bytes(domain)
        self.tag_bytes = tag_bytes
        self.label_size = label_size
        self._key = self.backend.check_scalar(key) if key is not None else self.backend.random_scalar(self._rng)
        self.version = 0
        self.dataset_version = ""
        self._d16 = np.empty((0, 2), dtype=np.uint64)   # sorted by (hi, lo); tag = prefix of hi
        self._labels = np.empty((0, record_len(label_size)), dtype=np.uint8)
        self._deltas: list[bytes] = []
        self.queries_evaluated = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, ids: Iterable[str] = (), *, epoch: str, labels: Mapping[str, bytes] | None = None,
              label_size: int | None = None, key: bytes | None = None,
              dataset_version: str = "", domain: bytes = LOOKUP_DOMAIN, tag_bytes: int = 8,
              backend: EcBackend | str | None = None, rng: Rng | None = None,
              progress: Callable[[int, int], None] | None = None) -> LookupProvider:
        """Evaluate F on every identifier (and encrypt labels) under ``key`` (fresh if not given).

        ``progress(done, total)`` is called after each batch of identifiers.
        """
        if labels is not None and label_size is None:
            label_size = max((len(v) for v in labels.values()), default=0) or 1
        label_size = label_size or 0
        if labels is not None and not label_size:
            raise InvalidInput("label_size must be positive for a labelled filter")
        self = cls(epoch=epoch, key=key, domain=domain, tag_bytes=tag_bytes, label_size=label_size,
                   backend=backend, rng=rng)
        all_ids = normalise_ids(list(ids) + (list(labels) if labels else []))
        norm_labels = {normalise_id(k): v for k, v in labels.items()} if labels else None
        d16, recs = self._evaluate_rows(all_ids, norm_labels, progress)
        self._d16, self._labels = self._sorted(d16, recs)
        self.dataset_version = dataset_version
        return self

    def _f_values(self, ids: list[str]) -> np.ndarray:
        return self.backend.scalarmult_batch(self._key, self.backend.hash_to_points(ids, self.domain))

    def _evaluate_rows(self, ids: list[str], labels: Mapping[str, bytes] | None,
                       progress: Callable[[int, int], None] | None = None,
                       encrypt: bool = True) -> tuple[np.ndarray, np.ndarray]:
        n = len(ids)
        d16 = np.empty((n, 2), dtype=np.uint64)
        recs = np.zeros((n, record_len(self.label_size)), dtype=np.uint8)
        for lo in range(0, n, BUILD_BATCH):
            part = ids[lo:lo + BUILD_BATCH]
            f = self._f_values(part)
            d = digest16(f)
            d16[lo:lo + len(part)] = d
            if self.label_size and encrypt:
                tags = tags_from_digest(d, self.tag_bytes)
                raw = f.tobytes()
                for j, ident in enumerate(part):
                    payload = labels.get(ident, b"") if labels else b""
                    blob = sm4_gcm_encrypt(label_key(raw[32 * j:32 * j + 32]),
                                           encode_label(payload, self.label_size),
                                           label_aad(self.epoch, int(tags[j]), self.tag_bytes))
                    recs[lo + j] = np.frombuffer(blob, dtype=np.uint8)
            if progress is not None:
                progress(min(n, lo + BUILD_BATCH), n)
        return d16, recs

    @staticmethod
    def _sorted(d16: np.ndarray, recs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((d16[:, 1], d16[:, 0]))
        return np.ascontiguousarray(d16[order]), np.ascontiguousarray(recs[order])

    # ------------------------------------------------------------------ publishing
    @property
    def count(self) -> int:
        return len(self._d16)

    @property
    def tags(self) -> np.ndarray:
        return tags_from_digest(self._d16, self.tag_bytes)

    def snapshot(self) -> bytes:
        """The filter for requesters (header + tags + encrypted labels)."""
        header = {"kind": "snapshot", "epoch": self.epoch, "version": self.version,
                  "tag_bytes": self.tag_bytes, "label_size": self.label_size, "count": self.count,
                  "domain": self.domain.hex(), "curve": "x25519"}
        return pack(SNAPSHOT_MAGIC, header, tags_to_bytes(self.tags, self.tag_bytes),
                     self._labels.tobytes())

    def deltas_since(self, version: int) -> list[bytes]:
        """Deltas that bring a requester's filter from ``version`` to the current one."""
        if not 0 <= version <= self.version:
            raise InvalidInput("unknown filter version")
        first = self.version - len(self._deltas)
        if version < first:
            raise FailedPrecondition("deltas that old are not kept; send a fresh snapshot")
        return self._deltas[version - first:]

    def apply_changes(self, added: Iterable[str] | Mapping[str, bytes] = (), removed: Iterable[str] = (), *,
                      dataset_version: str | None = None) -> bytes:
        """Update the filter for rows added/removed from the key column; returns the delta.

        ``added`` may map identifiers to new labels; adding an identifier that is present
        replaces its label (an upsert). Removing an identifier that is absent is an error.
        """
        rem_ids = normalise_ids(removed)
        if isinstance(added, Mapping):
            add_labels = {normalise_id(k): v for k, v in added.items()}
            add_ids = list(add_labels)
        else:
            add_labels = None
            add_ids = normalise_ids(added)
        d16, recs = self._d16, self._labels
        removed_tags: list[int] = []
        removed_recs: list[np.ndarray] = []
        drop: set[int] = set()
        if rem_ids:
            rd, _ = self._evaluate_rows(rem_ids, None, encrypt=False)
            for row in rd:
                pos = self._find(d16, row)
                if pos is None:
                    raise InvalidInput("a removed identifier is not in the filter")
                drop.add(pos)
        if add_ids:
            ad, arecs = self._evaluate_rows(add_ids, add_labels)
            keep = np.ones(len(ad), dtype=bool)
            for j, row in enumerate(ad):
                pos = self._find(d16, row)
                if pos is not None and pos not in drop:
                    if self.label_size:
                        drop.add(pos)  # upsert: replace the label
                    else:
                        keep[j] = False   # already present: nothing changes
            ad, arecs = ad[keep], arecs[keep]
        else:
            ad, arecs = np.empty((0, 2), dtype=np.uint64), recs[:0]
        drop_idx = np.array(sorted(drop), dtype=np.int64)
        for pos in drop_idx:
            removed_tags.append(int(d16[pos, 0] >> np.uint64(64 - 8 * self.tag_bytes)))
            removed_recs.append(recs[pos])
        if not len(drop_idx) and not len(ad):
            new_delta = None
        else:
            d16 = np.delete(d16, drop_idx, axis=0)
            recs = np.delete(recs, drop_idx, axis=0)
            self._d16, self._labels = self._sorted(np.concatenate([d16, ad]), np.concatenate([recs, arecs]))
            new_delta = True
        if dataset_version is not None:
            self.dataset_version = dataset_version
        header = {"kind": "delta", "epoch": self.epoch, "from_version": self.version,
                  "to_version": self.version + (1 if new_delta else 0), "tag_bytes": self.tag_bytes,
                  "label_size": self.label_size, "removed": len(removed_tags), "added": len(ad)}
        rl = record_len(self.label_size)
        delta = pack(
            DELTA_MAGIC, header,
            tags_to_bytes(np.array(removed_tags, dtype=np.uint64), self.tag_bytes),
            np.array(removed_recs, dtype=np.uint8).reshape(-1, rl).tobytes() if rl else b"",
            tags_to_bytes(tags_from_digest(ad, self.tag_bytes), self.tag_bytes),
            arecs.tobytes(),
        )
        if new_delta:
            self.version += 1
            self._deltas.append(delta)
        return delta

    @staticmethod
    def _find(d16: np.ndarray, row: np.ndarray) -> int | None:
        lo = int(np.searchsorted(d16[:, 0], row[0], side="left"))
        hi = int(np.searchsorted(d16[:, 0], row[0], side="right"))
        for pos in range(lo, hi):
            if d16[pos, 1] == row[1]:
                return pos
        return None

    # ------------------------------------------------------------------ online
    def evaluate(self, blinded: bytes, count: int | None = None) -> bytes:
        """Blind evaluation: each received point raised to the epoch key, same order."""
        pts = decode_points(blinded, count)
        out = self.backend.scalarmult_batch(self._key, pts)
        self.queries_evaluated += len(pts)
        return out.tobytes()

    def __repr__(self) -> str:
        return f"<LookupProvider epoch={self.epoch} version={self.version} n={self.count}>"


from .lookup_requester import LookupQuery, LookupRequester, LookupResult  # noqa: E402,F401 (public names stay here)
