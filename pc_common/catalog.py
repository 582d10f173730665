"""Helpers over the published catalog (政务数据目录) shared by nodes, coordinator and clients."""
from __future__ import annotations

import hashlib

from pc_common.pb import common_pb2


def catalog_digest(catalog: common_pb2.Catalog) -> str:
    """Digest of a published catalog, so heartbeats can tell when it changed."""
    return hashlib.sha256(catalog.SerializeToString(deterministic=True)).hexdigest()


def catalog_view(catalog: common_pb2.Catalog) -> dict:
    """``{"agency.dataset": {"key_column": …, "columns": {name: type}, "categories": {name: [...]},
    "grants": [grant_view(g), …]}}`` for rule and query validation."""
    return {f"{d.agency}.{d.name}": {"key_column": d.key_column, "columns": {c.name: c.type for c in d.columns},
                                     "categories": {c.name: list(c.categories) for c in d.columns if c.categories},
                                     "grants": [grant_view(g) for g in d.grants]}
            for d in catalog.datasets}


def grant_view(g: common_pb2.PolicyGrant) -> dict:
    """One published grant as plain data; ``epsilon`` / ``epsilon_budget`` are None where unset."""
    return {"requester": g.requester, "purposes": list(g.purposes), "column_uses": dict(g.column_uses),
            "approval": g.approval, "reveal": g.reveal, "min_group_size": int(g.min_group_size),
            "epsilon": g.epsilon if g.HasField("epsilon") else None,
            "epsilon_budget": g.epsilon_budget if g.HasField("epsilon_budget") else None}
