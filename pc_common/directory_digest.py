"""Digest of a published catalog, so heartbeats can tell when it changed."""
from __future__ import annotations

import hashlib

from pc_common.pb import common_pb2


def catalog_digest(catalog: common_pb2.Catalog) -> str:
    return hashlib.sha256(catalog.SerializeToString(deterministic=True)).hexdigest()
