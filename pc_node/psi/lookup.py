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
Identifiers can be guessed by querying many of them; the caller enforces quotas.
"""
from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pc_common.errors import CryptoError, FailedPrecondition, IntegrityError, InvalidInput
from pc_common.gm import sm4_gcm_decrypt, sm4_gcm_encrypt

from .curve import EcBackend, resolve_backend
from .encoding import POINT_LEN, check_chunk_size, decode_points, normalise_id, normalise_ids, split_chunks
from .randomness import Rng, system_rng
from .hashing import sm3_hasher
from .x25519 import blinding_pair

__all__ = [
    "LOOKUP_DOMAIN",
    "LookupProvider",
    "LookupRequester",
    "LookupQuery",
    "LookupResult",
]

LOOKUP_DOMAIN = b"pc.lookup.v1"
_TAG_CTX = b"pc.lookup.tag"
_KEY_CTX = b"pc.lookup.label"
_SNAPSHOT_MAGIC = b"PCLS\x01"
_DELTA_MAGIC = b"PCLD\x01"
_MAX_HEADER = 4096
_GCM_OVERHEAD = 12 + 16
_LEN_PREFIX = 2
_MAX_LABEL = 4096
_BUILD_BATCH = 32768
_EPOCH_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _record_len(label_size: int) -> int:
    return _GCM_OVERHEAD + _LEN_PREFIX + label_size if label_size else 0


def _check_params(epoch: str, tag_bytes: int, label_size: int) -> None:
    if not isinstance(epoch, str) or not _EPOCH_RE.match(epoch):
        raise InvalidInput("epoch must be 1-64 characters of letters, digits and . _ : -")
    if not isinstance(tag_bytes, int) or not 4 <= tag_bytes <= 8:
        raise InvalidInput("tag_bytes must be between 4 and 8")
    if not isinstance(label_size, int) or not 0 <= label_size <= _MAX_LABEL:
        raise InvalidInput(f"label_size must be between 0 and {_MAX_LABEL}")


def _digest16(f_values: np.ndarray) -> np.ndarray:
    """``(n, 2)`` uint64 (big-endian halves) of SM3(tag ctx || F) truncated to 16 bytes."""
    n = len(f_values)
    raw = f_values.tobytes()
    base = sm3_hasher(_TAG_CTX)
    parts = []
    for i in range(0, 32 * n, 32):
        h = base.copy()
        h.update(raw[i:i + 32])
        parts.append(h.digest()[:16])
    return np.frombuffer(b"".join(parts), dtype=">u8").reshape(n, 2).astype(np.uint64)


def _tags_from_digest(d16: np.ndarray, tag_bytes: int) -> np.ndarray:
    return d16[:, 0] >> np.uint64(64 - 8 * tag_bytes)


def _label_key(f_value: bytes) -> bytes:
    return sm3_hasher(_KEY_CTX + f_value).digest()[:16]


def _label_aad(epoch: str, tag: int, tag_bytes: int) -> bytes:
    return b"pc.lookup.label|" + epoch.encode() + b"|" + int(tag).to_bytes(tag_bytes, "big")


def _tags_to_bytes(tags: np.ndarray, tag_bytes: int) -> bytes:
    return tags.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - tag_bytes:].tobytes()


def _tags_from_bytes(data: memoryview, count: int, tag_bytes: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8).reshape(count, tag_bytes)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, 8 - tag_bytes:] = raw
    return full.view(">u8").ravel().astype(np.uint64)


def _pack(magic: bytes, header: dict, *bodies: bytes) -> bytes:
    hj = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join((magic, struct.pack(">I", len(hj)), hj, *bodies))


def _unpack(magic: bytes, data: bytes) -> tuple[dict, memoryview]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError("lookup message must be bytes")
    view = memoryview(data).cast("B")
    if len(view) < len(magic) + 4 or bytes(view[:len(magic)]) != magic:
        raise CryptoError("not a lookup message of the expected kind")
    (hlen,) = struct.unpack(">I", view[len(magic):len(magic) + 4])
    start = len(magic) + 4
    if hlen > _MAX_HEADER or start + hlen > len(view):
        raise CryptoError("lookup message header is malformed")
    try:
        header = json.loads(bytes(view[start:start + hlen]))
    except ValueError:
        raise CryptoError("lookup message header is malformed") from None
    if not isinstance(header, dict):
        raise CryptoError("lookup message header is malformed")
    return header, view[start + hlen:]


def _int_field(header: dict, name: str, lo: int, hi: int) -> int:
    v = header.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CryptoError("lookup message header is malformed")
    return v


def _encode_label(payload: bytes, label_size: int) -> bytes:
    if not isinstance(payload, (bytes, bytearray)):
        raise InvalidInput("labels must be bytes")
    if len(payload) > label_size:
        raise InvalidInput("a label is longer than label_size")
    return len(payload).to_bytes(2, "big") + bytes(payload) + bytes(label_size - len(payload))


def _decode_label(plain: bytes) -> bytes:
    n = int.from_bytes(plain[:2], "big")
    if n > len(plain) - 2:
        raise IntegrityError("label failed authentication")
    return plain[2:2 + n]


# --------------------------------------------------------------------------- provider
class LookupProvider:
    """The data holder's side: OPRF key, filter, deltas and blind evaluation.

    Build with :meth:`build` (offline; cached in ``cache_dir`` when given). Ship
    :meth:`snapshot` to requesters once per epoch and the bytes returned by
    :meth:`apply_changes` afterwards. Answer online queries with :meth:`evaluate`.
    """

    def __init__(self, *, epoch: str, key: bytes | None = None, domain: bytes = LOOKUP_DOMAIN,
                 tag_bytes: int = 8, label_size: int = 0, backend: EcBackend | str | None = None,
                 rng: Rng | None = None) -> None:
        _check_params(epoch, tag_bytes, label_size)
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
        self._labels = np.empty((0, _record_len(label_size)), dtype=np.uint8)
        self._deltas: list[bytes] = []
        self.queries_evaluated = 0

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, ids: Iterable[str] = (), *, epoch: str, labels: Mapping[str, bytes] | None = None,
              label_size: int | None = None, key: bytes | None = None, cache_dir: str | os.PathLike | None = None,
              dataset_version: str = "", domain: bytes = LOOKUP_DOMAIN, tag_bytes: int = 8,
              backend: EcBackend | str | None = None, rng: Rng | None = None,
              progress: Callable[[int, int], None] | None = None) -> LookupProvider:
        """Evaluate F on every identifier (and encrypt labels), or load the epoch's cache.

        ``cache_dir`` keeps the filter and, when ``key`` is not given, the epoch key (file mode
        0600); the cache is reused when epoch, parameters, key and ``dataset_version`` match.
        The cache is as sensitive as the key column: keep it on the node's protected disk.
        """
        if labels is not None and label_size is None:
            label_size = max((len(v) for v in labels.values()), default=0) or 1
        label_size = label_size or 0
        if labels is not None and not label_size:
            raise InvalidInput("label_size must be positive for a labelled filter")
        cache = _Cache(cache_dir, epoch) if cache_dir is not None else None
        if key is None and cache is not None:
            key = cache.load_key()
        self = cls(epoch=epoch, key=key, domain=domain, tag_bytes=tag_bytes, label_size=label_size,
                   backend=backend, rng=rng)
        if cache is not None:
            if key is None:
                cache.store_key(self._key)
            if cache.load_into(self, dataset_version):
                return self
        all_ids = normalise_ids(list(ids) + (list(labels) if labels else []))
        norm_labels = {normalise_id(k): v for k, v in labels.items()} if labels else None
        d16, recs = self._evaluate_rows(all_ids, norm_labels, progress)
        self._d16, self._labels = self._sorted(d16, recs)
        self.dataset_version = dataset_version
        if cache is not None:
            cache.save(self)
        return self

    def _f_values(self, ids: list[str]) -> np.ndarray:
        return self.backend.scalarmult_batch(self._key, self.backend.hash_to_points(ids, self.domain))

    def _evaluate_rows(self, ids: list[str], labels: Mapping[str, bytes] | None,
                       progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = len(ids)
        d16 = np.empty((n, 2), dtype=np.uint64)
        recs = np.empty((n, _record_len(self.label_size)), dtype=np.uint8)
        for lo in range(0, n, _BUILD_BATCH):
            part = ids[lo:lo + _BUILD_BATCH]
            f = self._f_values(part)
            d = _digest16(f)
            d16[lo:lo + len(part)] = d
            if self.label_size:
                tags = _tags_from_digest(d, self.tag_bytes)
                raw = f.tobytes()
                for j, ident in enumerate(part):
                    payload = labels.get(ident, b"") if labels else b""
                    blob = sm4_gcm_encrypt(_label_key(raw[32 * j:32 * j + 32]),
                                           _encode_label(payload, self.label_size),
                                           _label_aad(self.epoch, int(tags[j]), self.tag_bytes))
                    recs[lo + j] = np.frombuffer(blob, dtype=np.uint8)
            if progress is not None:
                progress(min(n, lo + _BUILD_BATCH), n)
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
        return _tags_from_digest(self._d16, self.tag_bytes)

    def snapshot(self) -> bytes:
        """The filter for requesters (header + tags + encrypted labels)."""
        header = {"kind": "snapshot", "epoch": self.epoch, "version": self.version,
                  "tag_bytes": self.tag_bytes, "label_size": self.label_size, "count": self.count,
                  "domain": self.domain.hex(), "curve": "x25519"}
        return _pack(_SNAPSHOT_MAGIC, header, _tags_to_bytes(self.tags, self.tag_bytes),
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
                      dataset_version: str | None = None, cache_dir: str | os.PathLike | None = None) -> bytes:
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
        drop: list[int] = []
        if rem_ids:
            rd, _ = self._evaluate_rows(rem_ids, None)
            for row in rd:
                pos = self._find(d16, row)
                if pos is None:
                    raise InvalidInput("a removed identifier is not in the filter")
                drop.append(pos)
        if add_ids:
            ad, arecs = self._evaluate_rows(add_ids, add_labels)
            keep = np.ones(len(ad), dtype=bool)
            for j, row in enumerate(ad):
                pos = self._find(d16, row)
                if pos is not None and pos not in drop:
                    if self.label_size:
                        drop.append(pos)  # upsert: replace the label
                    else:
                        keep[j] = False   # already present: nothing changes
            ad, arecs = ad[keep], arecs[keep]
        else:
            ad, arecs = np.empty((0, 2), dtype=np.uint64), recs[:0]
        drop_idx = np.array(sorted(set(drop)), dtype=np.int64)
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
        rl = _record_len(self.label_size)
        delta = _pack(
            _DELTA_MAGIC, header,
            _tags_to_bytes(np.array(removed_tags, dtype=np.uint64), self.tag_bytes),
            np.array(removed_recs, dtype=np.uint8).reshape(-1, rl).tobytes() if rl else b"",
            _tags_to_bytes(_tags_from_digest(ad, self.tag_bytes), self.tag_bytes),
            arecs.tobytes(),
        )
        if new_delta:
            self.version += 1
            self._deltas.append(delta)
        if cache_dir is not None:
            _Cache(cache_dir, self.epoch).save(self)
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


# --------------------------------------------------------------------------- cache
class _Cache:
    """``<dir>/<sm3(epoch)[:16]>/``: meta.json, rows.npy, labels.npy, key (0600), deltas."""

    def __init__(self, root: str | os.PathLike, epoch: str) -> None:
        slug = sm3_hasher(epoch.encode()).digest()[:8].hex()
        self.dir = os.path.join(os.fspath(root), f"lookup-{slug}")

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def load_key(self) -> bytes | None:
        try:
            with open(self._path("key"), "rb") as fh:
                key = fh.read()
        except FileNotFoundError:
            return None
        if len(key) != 32:
            raise CryptoError("cached lookup key is corrupt")
        return key

    def store_key(self, key: bytes) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(self._path("key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)

    @staticmethod
    def _key_id(p: LookupProvider) -> str:
        return sm3_hasher(b"pc.lookup.keyid" + p._key).digest()[:8].hex()

    def _meta(self, p: LookupProvider) -> dict:
        return {"epoch": p.epoch, "domain": p.domain.hex(), "tag_bytes": p.tag_bytes,
                "label_size": p.label_size, "key_id": self._key_id(p)}

    def load_into(self, p: LookupProvider, dataset_version: str) -> bool:
        try:
            with open(self._path("meta.json"), encoding="utf-8") as fh:
                meta = json.load(fh)
            if {k: meta.get(k) for k in self._meta(p)} != self._meta(p):
                return False
            if meta.get("dataset_version") != dataset_version:
                return False
            d16 = np.load(self._path("rows.npy"), allow_pickle=False)
            recs = np.load(self._path("labels.npy"), allow_pickle=False)
            deltas = []
            first = int(meta["version"]) - int(meta.get("n_deltas", 0))
            for v in range(first, int(meta["version"])):
                with open(self._path(f"delta-{v}.bin"), "rb") as fh:
                    deltas.append(fh.read())
        except (FileNotFoundError, ValueError, KeyError, OSError):
            return False
        if d16.dtype != np.uint64 or d16.ndim != 2 or d16.shape[1] != 2 or len(recs) != len(d16):
            return False
        p._d16, p._labels = d16, recs
        p.version = int(meta["version"])
        p.dataset_version = dataset_version
        p._deltas = deltas
        return True

    def save(self, p: LookupProvider) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        first = p.version - len(p._deltas)
        for i, d in enumerate(p._deltas):
            path = self._path(f"delta-{first + i}.bin")
            if not os.path.exists(path):
                self._atomic(path, lambda fh, d=d: fh.write(d))
        self._atomic(self._path("rows.npy"), lambda fh: np.save(fh, p._d16, allow_pickle=False))
        self._atomic(self._path("labels.npy"), lambda fh: np.save(fh, p._labels, allow_pickle=False))
        meta = dict(self._meta(p), version=p.version, n_deltas=len(p._deltas),
                    dataset_version=p.dataset_version, count=p.count)
        self._atomic(self._path("meta.json"), lambda fh: fh.write(json.dumps(meta).encode()))

    def _atomic(self, path: str, write: Callable) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


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
        header, body = _unpack(_SNAPSHOT_MAGIC, snapshot)
        if header.get("kind") != "snapshot" or header.get("curve") != "x25519":
            raise CryptoError("lookup snapshot header is malformed")
        epoch = header.get("epoch")
        try:
            self.tag_bytes = _int_field(header, "tag_bytes", 4, 8)
            self.label_size = _int_field(header, "label_size", 0, _MAX_LABEL)
            _check_params(epoch, self.tag_bytes, self.label_size)
            self.domain = bytes.fromhex(header.get("domain", ""))
        except (InvalidInput, ValueError, TypeError):
            raise CryptoError("lookup snapshot header is malformed") from None
        self.epoch: str = epoch
        self.version = _int_field(header, "version", 0, 2**62)
        count = _int_field(header, "count", 0, 2**40)
        rl = _record_len(self.label_size)
        if len(body) != count * (self.tag_bytes + rl):
            raise CryptoError("lookup snapshot length does not match its count")
        self.backend = resolve_backend(backend, "x25519")
        self._tags = _tags_from_bytes(body[:count * self.tag_bytes], count, self.tag_bytes)
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
        header, body = _unpack(_DELTA_MAGIC, delta)
        if header.get("kind") != "delta" or header.get("epoch") != self.epoch:
            raise FailedPrecondition("delta is for another key epoch; fetch a fresh filter")
        if (_int_field(header, "tag_bytes", 4, 8) != self.tag_bytes
                or _int_field(header, "label_size", 0, _MAX_LABEL) != self.label_size):
            raise CryptoError("lookup delta header is malformed")
        frm = _int_field(header, "from_version", 0, 2**62)
        to = _int_field(header, "to_version", 0, 2**62)
        n_rem = _int_field(header, "removed", 0, 2**40)
        n_add = _int_field(header, "added", 0, 2**40)
        if frm != self.version:
            raise FailedPrecondition("lookup filter is out of step with this delta")
        if to not in (frm, frm + 1):
            raise CryptoError("lookup delta header is malformed")
        tb, rl = self.tag_bytes, _record_len(self.label_size)
        if len(body) != (n_rem + n_add) * (tb + rl):
            raise CryptoError("lookup delta length does not match its counts")
        off = 0
        rem_tags = _tags_from_bytes(body[off:off + n_rem * tb], n_rem, tb)
        off += n_rem * tb
        rem_recs = np.frombuffer(body[off:off + n_rem * rl], dtype=np.uint8).reshape(n_rem, rl)
        off += n_rem * rl
        add_tags = _tags_from_bytes(body[off:off + n_add * tb], n_add, tb)
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
        d16 = _digest16(f_values)
        tags = _tags_from_digest(d16, self.tag_bytes)
        lo = np.searchsorted(self._tags, tags, side="left")
        hi = np.searchsorted(self._tags, tags, side="right")
        hit = hi > lo
        if not self.labelled:
            return LookupResult([ids[i] for i in np.nonzero(hit)[0]], {})
        members: list[str] = []
        labels: dict[str, bytes] = {}
        raw = f_values.tobytes()
        for i in np.nonzero(hit)[0]:
            key = _label_key(raw[32 * i:32 * i + 32])
            aad = _label_aad(self.epoch, int(tags[i]), self.tag_bytes)
            for pos in range(int(lo[i]), int(hi[i])):
                try:
                    plain = sm4_gcm_decrypt(key, self._labels[pos].tobytes(), aad)
                    payload = _decode_label(plain)
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

