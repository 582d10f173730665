"""k-party PSI (requester R and providers P1..Pm, m ≥ 2): R learns only X ∩ Y1 ∩ … ∩ Ym.

Every set is raised to every *provider* key; R's own set also to R's key ``a``. Sets travel
party to party through the coordinator, which relays and (by default) combines:

1. **R's chain** — R sends ``H(x)^a`` (``RequesterSession.blinded_chunks``, R-shuffled).
   P1, …, Pm in turn apply ``hop(shuffle=False).process`` (streaming, order kept); R gets
   ``E(x) = H(x)^(a·b1…bm)`` back (``accept_double``). In cardinality-only mode the last
   provider uses ``hop(shuffle=True)`` so R can't map values back to identifiers.
2. **Provider chains** — each Pi sends ``H(y)^bi`` (``own_chunks``, Pi-shuffled); every other
   provider Pj applies ``hop(shuffle=True)`` (re-encrypt *and* re-shuffle the whole set).
   The result ``E(y) = H(y)^(b1…bm)`` goes to the combiner as set *i*.
3. **Combiner** (:class:`~pc_common.psi_plan.Combiner`, keyless, shared with the coordinator
   that runs it; or any party that is not R) keeps the rows present in all m provider sets
   and sends them to R, shuffled.
4. R raises the combined set to ``a`` (``accept_provider``) and intersects:
   ``finish()`` → the k-way intersection, ``cardinality()`` → its size.

Why this shape: R never sees an individual provider's set, so it cannot learn X ∩ Yi for
one provider alone — only the k-way result and |Y1 ∩ … ∩ Ym| (the analogue of learning |Y|
in two-party PSI). ``a`` is applied to provider values only by R, after combining, so the
combiner (which sees ``E(x)`` pass by and holds every ``E(Yi)``) can't relate R's values to
providers'. Re-shuffling at every hop means no single provider colluding with the combiner
can map combined rows back to its identifiers.

What each party learns (semi-honest, combiner not colluding with R): R — the k-way
intersection and |∩Yi|; each provider — |X| and every |Yj|; the combiner — every |Yi|, |X|,
and the sizes of intersections among providers' sets (it can compare E(Yi) with E(Yj)).
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
                   chunk_size: int = DEFAULT_CHUNK, rng: Rng | None = None) -> Combiner:
    """Drive the whole k-party flow in process (tests, benchmarks, the local helper).

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
    # 3./4. combine and finish at the requester
    for c in combiner.result_chunks(chunk_size):
        requester.accept_provider(c)
    return combiner
