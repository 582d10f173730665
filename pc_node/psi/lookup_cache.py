"""On-disk cache of a lookup provider's epoch state (see :mod:`pc_node.psi.lookup`).

``<dir>/lookup-<sm3(epoch)[:8] hex>/``: ``meta.json``, ``rows.npy`` (16-byte digests),
``labels.npy``, ``delta-<v>.bin`` and, when the caller gave no key, ``key`` (mode 0600).
No plaintext identifiers are written. Files are replaced atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pc_common.errors import CryptoError

from .hashing import sm3_hasher

if TYPE_CHECKING:
    from .lookup import LookupProvider


class FilterCache:
    """One epoch's directory under the caller's cache root."""

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
