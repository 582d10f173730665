"""Helpers over the published catalog (政务数据目录) shared by nodes, coordinator and clients."""
from __future__ import annotations

import hashlib

from pc_common.pb import common_pb2


def catalog_digest(catalog: common_pb2.Catalog) -> str:
    """Digest of a published catalog, so heartbeats can tell when it changed."""
    return hashlib.sha256(catalog.SerializeToString(deterministic=True)).hexdigest()


def catalog_view(catalog: common_pb2.Catalog) -> dict:
    """``{"agency.dataset": {"key_column": …, "columns": {name: type}}}`` for rule validation."""
    return {f"{d.agency}.{d.name}": {"key_column": d.key_column, "columns": {c.name: c.type for c in d.columns}}
            for d in catalog.datasets}
