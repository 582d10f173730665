"""k-party PSI (requester R and providers P1..Pm, m ≥ 2): R learns only X ∩ Y1 ∩ … ∩ Ym.

Every set is raised to every *provider* key; R's own set also to R's key ``a``. Sets travel
party to party through the coordinator, which only relays (the plan is
``pc_common.psi_plan.plan``, computed by every party from the signed spec):

1. **R's chain** — R sends ``H(x)^a`` (``RequesterSession.blinded_chunks``, R-shuffled).
   P1, …, Pm in turn apply ``hop(shuffle=False).process`` (order kept); the last sends
   ``E(x) = H(x)^(a·b1…bm)`` to R sealed (``accept_double``). In cardinality-only mode the
   last provider uses ``hop(shuffle=True)`` so R can't map values back to identifiers.
2. **Provider chains** — each Pi sends ``H(y)^bi`` (``own_chunks``, Pi-shuffled); every other
   provider Pj applies ``hop(shuffle=True)`` (re-encrypt *and* re-shuffle the whole set). The
   last hop seals ``E(Yi) = H(y)^(b1…bm)`` to the *combining provider* P1.
3. **Combiner** (:class:`~pc_common.psi_plan.Combiner`, keyless, run by P1) keeps the rows
   present in all m sets, pads them to the smallest set's size with that set's other rows
   raised to a fresh random scalar (``pad_to_smallest``), shuffles, and seals them to R.
4. R raises the combined set to ``a`` (``accept_provider``) and intersects:
   ``finish()`` → the k-way intersection, ``cardinality()`` → its size.

Why this shape: R never sees an individual provider's set, so it cannot learn X ∩ Yi for one
provider alone; with padding it learns min |Yi| instead of |Y1 ∩ … ∩ Ym|. The coordinator
sees in clear only streams under pairwise different sets of keys (R's chain always carries
``a``, a provider chain's partial key sets are distinct cyclic runs) and sealed envelopes,
so it can intersect nothing: it learns set sizes. Someone must compare the E(Yi): P1 does, so
P1 learns the sizes of intersections among the providers' sets (not which records: every
E(Yi) was reshuffled by a party other than its owner). Re-shuffling at every hop means no
single provider colluding with the coordinator can map combined rows back to identifiers.

What each party learns (semi-honest, coordinator not colluding with R): R — the k-way
intersection and min |Yi|; each provider — |X| and every |Yj|; the combining provider also
every |Yi ∩ Yj| (and larger subsets'); the coordinator — |X| and every |Yi|.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pc_common.errors import InvalidInput
from pc_common.psi_plan import Combiner, provider_chain_order

from .protocol import DEFAULT_CHUNK, ProviderSession, RequesterSession
from .randomness import Rng

__all__ = ["Combiner", "MultiPartyProvider", "MultiPartyRequester", "provider_chain_order"]

#: The requester core is the same object as in two-party PSI.
MultiPartyRequester = RequesterSession
#: Providers use ``own_chunks`` and ``hop(shuffle=…)`` of the two-party provider core.
MultiPartyProvider = ProviderSession


def run_multiparty(requester: RequesterSession, providers: Sequence[ProviderSession], *,
                   chunk_size: int = DEFAULT_CHUNK, rng: Rng | None = None, pad: bool = False) -> Combiner:
    """Drive the whole k-party flow in process (tests, benchmarks, the local helper); without
    transport there is nothing to seal. ``pad``: the combined set padded as the nodes do.

    Returns the combiner (for its size bookkeeping); results are read from ``requester``.
    """
    m = len(providers)
    if m < 2:
        raise InvalidInput("k-party PSI needs at least two providers")
    # 1. requester's chain
    stream: Iterable[bytes] = requester.blinded_chunks(chunk_size)
    for j, p in enumerate(providers):
        last = j == m - 1
        if last and requester.cardinality_only:
            hop = p.hop(shuffle=True)
            for c in stream:
                hop.accept(c)
            stream = list(hop.output_chunks(chunk_size))
        else:
            hop = p.hop(shuffle=False)
            stream = [hop.process(c) for c in stream]
    for c in stream:
        requester.accept_double(c)
    # 2. provider chains
    combiner = Combiner(m, rng)
    for i, owner in enumerate(providers):
        chunks: list[bytes] = list(owner.own_chunks(chunk_size))
        for j in provider_chain_order(i, m):
            hop = providers[j].hop(shuffle=True)
            for c in chunks:
                hop.accept(c)
            chunks = list(hop.output_chunks(chunk_size))
        for c in chunks:
            combiner.accept(i, c)
    # 3./4. combine (at P1) and finish at the requester
    if pad:
        fresh = providers[0].backend.random_scalar()
        combiner.pad_to_smallest(lambda rows: providers[0].backend.scalarmult_batch(fresh, rows) if len(rows)
                                 else rows)
    for c in combiner.result_chunks(chunk_size):
        requester.accept_provider(c)
    return combiner
