"""Private set intersection for the node: ECDH-PSI, PSI-CA, k-party PSI, query-private lookup.

Public API (protocol cores are transport-free; every message is ``bytes``):

* :class:`RequesterSession`, :class:`ProviderSession` — two-party PSI / PSI-CA
* :func:`run_multiparty` — k-party PSI (see :mod:`.multiparty`); its keyless :class:`Combiner` and
  :func:`provider_chain_order` live in :mod:`pc_common.psi_plan`, shared with the coordinator
* :class:`LookupProvider`, :class:`LookupRequester` — unbalanced OPRF lookup (匿踪查询)
* :func:`intersect`, :func:`intersect_many`, :func:`lookup` — in-process drivers
* :func:`best_backend`, :func:`get_backend`, :class:`EcBackend` — the EC backends
* :func:`normalise_id`, :func:`encode_points`, :func:`decode_points` — encoding helpers

See ``docs/psi.md`` for the protocols, what each party learns, and measured speeds.
"""
from __future__ import annotations

from .curve import (
    CURVES,
    EcBackend,
    available_backends,
    backend_status,
    best_backend,
    get_backend,
    worker_count,
)
from .encoding import (
    POINT_LEN,
    decode_indices,
    decode_points,
    encode_indices,
    encode_points,
    normalise_id,
    normalise_ids,
)
from .local import PsiResult, intersect, intersect_many, lookup
from .lookup import (
    LOOKUP_DOMAIN,
    LookupProvider,
    LookupQuery,
    LookupRequester,
    LookupResult,
)
from .multiparty import Combiner, provider_chain_order, run_multiparty
from .protocol import (
    DEFAULT_CHUNK,
    DEFAULT_DOMAIN,
    ProviderSession,
    ReencryptHop,
    RequesterSession,
)
from .randomness import deterministic_rng

__all__ = [
    "CURVES",
    "DEFAULT_CHUNK",
    "DEFAULT_DOMAIN",
    "LOOKUP_DOMAIN",
    "POINT_LEN",
    "Combiner",
    "EcBackend",
    "LookupProvider",
    "LookupQuery",
    "LookupRequester",
    "LookupResult",
    "ProviderSession",
    "PsiResult",
    "ReencryptHop",
    "RequesterSession",
    "available_backends",
    "backend_status",
    "best_backend",
    "decode_indices",
    "decode_points",
    "deterministic_rng",
    "encode_indices",
    "encode_points",
    "get_backend",
    "intersect",
    "intersect_many",
    "lookup",
    "normalise_id",
    "normalise_ids",
    "provider_chain_order",
    "run_multiparty",
    "worker_count",
]
