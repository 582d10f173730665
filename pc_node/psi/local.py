"""In-process drivers: run a whole protocol between local sessions (tests, demos, benchmarks).

They exercise exactly the chunked byte messages the transport will carry, just without a
network in between.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pc_common.errors import InvalidInput

from .curve import EcBackend
from .lookup import LookupProvider, LookupRequester, LookupResult
from .multiparty import run_multiparty
from .protocol import DEFAULT_CHUNK, DEFAULT_DOMAIN, ProviderSession, RequesterSession
from .randomness import Rng

__all__ = ["PsiResult", "intersect", "intersect_many", "lookup"]


@dataclass(frozen=True)
class PsiResult:
    """What the requester learned (and the provider, with ``result_to_provider``)."""

    cardinality: int
    intersection: list[str] | None          # None in cardinality-only mode
    provider_intersection: list[str] | None  # set with result_to_provider (two-party only)
    requester_size: int
    provider_size: int                       # |Y| two-party; |Y1 ∩ … ∩ Ym| k-party


def intersect(requester_ids: Iterable[str], provider_ids: Iterable[str], *,
              cardinality_only: bool = False, result_to_provider: bool = False,
              chunk_size: int = DEFAULT_CHUNK, domain: bytes = DEFAULT_DOMAIN,
              backend: EcBackend | str | None = None, curve: str = "x25519",
              requester_key: bytes | None = None, provider_key: bytes | None = None,
              rng: Rng | None = None) -> PsiResult:
    """Two-party ECDH-PSI (or PSI-CA) between two local sessions."""
    if cardinality_only and result_to_provider:
        raise InvalidInput("the result-to-both option reveals the intersection; "
                           "it cannot be combined with cardinality-only")
    a = RequesterSession(requester_ids, requester_key, rng, cardinality_only=cardinality_only,
                         domain=domain, backend=backend, curve=curve)
    b = ProviderSession(provider_ids, provider_key, rng, cardinality_only=cardinality_only,
                        domain=domain, backend=backend, curve=curve)
    if cardinality_only:
        for chunk in a.blinded_chunks(chunk_size):
            b.accept_blinded(chunk)
        for chunk in b.shuffled_reencrypted_chunks(chunk_size):
            a.accept_double(chunk)
    else:
        for chunk in a.blinded_chunks(chunk_size):
            a.accept_double(b.reencrypt(chunk))
    for chunk in b.own_chunks(chunk_size):
        a.accept_provider(chunk)
    inter = None if cardinality_only else a.finish()
    both = b.learn_intersection(a.provider_indices()) if result_to_provider else None
    return PsiResult(a.cardinality(), inter, both, a.count, a.provider_count)


def intersect_many(requester_ids: Iterable[str], provider_sets: Sequence[Iterable[str]], *,
                   cardinality_only: bool = False, chunk_size: int = DEFAULT_CHUNK,
                   domain: bytes = DEFAULT_DOMAIN, backend: EcBackend | str | None = None,
                   curve: str = "x25519", rng: Rng | None = None) -> PsiResult:
    """k-party PSI (k = 1 + len(provider_sets) ≥ 3): the requester learns only the k-way result."""
    a = RequesterSession(requester_ids, None, rng, cardinality_only=cardinality_only,
                         domain=domain, backend=backend, curve=curve)
    providers = [ProviderSession(ids, None, rng, domain=domain, backend=backend, curve=curve)
                 for ids in provider_sets]
    run_multiparty(a, providers, chunk_size=chunk_size, rng=rng)
    inter = None if cardinality_only else a.finish()
    return PsiResult(a.cardinality(), inter, None, a.count, a.provider_count)


def lookup(query_ids: Iterable[str], provider_ids: Iterable[str] = (), *,
           labels: Mapping[str, bytes] | None = None, epoch: str = "local",
           backend: EcBackend | str | None = None, rng: Rng | None = None) -> LookupResult:
    """One query-private lookup against a freshly built provider (slow for big sets: the
    provider's offline phase runs every call; real use keeps the provider and filter)."""
    provider = LookupProvider.build(provider_ids, epoch=epoch, labels=labels, backend=backend, rng=rng)
    requester = LookupRequester(provider.snapshot(), backend=backend)
    query = requester.query(query_ids, rng)
    return query.finish(provider.evaluate(query.blinded()))
