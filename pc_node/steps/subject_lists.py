"""Opaque slots and sealed subject lists: the requester's side of verification and queries.

The requester puts its subjects in random slots and group numbers in random order (the
layout tells the coordinator group sizes, nothing about who or which input rows), then sends
each provider — sealed end to end, in random order, with no grouping — the (slot, identifier)
list, bound to the job, the provider and the job's public key by the requester's SM2
signature, so a coordinator can swap in neither its own key nor its own identifiers.
"""
from __future__ import annotations

import hashlib
import random
import secrets
import struct
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from pc_common import gm
from pc_common import steps_schema as schema
from pc_common.errors import IntegrityError, InvalidInput, PermissionDenied
from pc_node import envelope
from pc_node.steps.common import blob_chunks

SLOT_ITEM = struct.Struct(">I18s")
_rng = random.SystemRandom()


def aad(kind: str, job_id: str, provider: str) -> bytes:
    return f"pc/{kind}/{job_id}/{provider}".encode()


def binding(kind: str, job_id: str, provider: str, pubctx: bytes, sealed: bytes) -> bytes:
    return f"pc/{kind}/binding\x00".encode() + f"{job_id}\x00{provider}\x00".encode() + \
        hashlib.sha256(pubctx).digest() + hashlib.sha256(sealed).digest()


def sealed_list(items: list[tuple[int, str]], recipient_public: bytes, aad_bytes: bytes) -> bytes:
    buf = bytearray(SLOT_ITEM.size * len(items))
    for i, (slot, ident) in enumerate(items):
        SLOT_ITEM.pack_into(buf, i * SLOT_ITEM.size, slot, ident.encode("ascii"))
    return envelope.seal(recipient_public, bytes(buf), aad_bytes)


def open_list(runtime, blob: bytes, aad_bytes: bytes) -> list[tuple[int, str]]:
    raw = envelope.open_envelope(runtime.x25519_private, blob, aad_bytes)
    if len(raw) % SLOT_ITEM.size:
        raise InvalidInput("sealed subject list has a bad length")
    # In bulk, as SLOT_ITEM.iter_unpack would read it: big-endian slot, 18 ASCII bytes kept whole.
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, SLOT_ITEM.size)
    slots = table[:, :4].copy().view(">u4").ravel().tolist()
    width = SLOT_ITEM.size - 4
    text = table[:, 4:].tobytes().decode("ascii")
    return list(zip(slots, (text[i:i + width] for i in range(0, len(text), width))))


def check_binding(runtime, kind: str, doc: dict, pubctx: bytes, sealed: bytes, signature: bytes) -> None:
    """At a provider: the key and list were signed by the job's requester for this node."""
    try:
        gm.Sm2PublicKey.from_hex(runtime.peer_keys(doc["requester"]).sm2_public).verify(
            binding(kind, doc["job_id"], runtime.node_id, pubctx, sealed), signature)
    except (IntegrityError, InvalidInput, ValueError):
        raise PermissionDenied("the key and subject list are not signed by the requester for this job") from None


@dataclass(frozen=True)
class Slots:
    slots: list[int]          # input row i sits in slot slots[i]
    group_no: list[int]       # opaque group number of input row i
    distinct: list            # the groups, in the random order of their numbers
    layout: np.ndarray        # slot -> group number (what the coordinator gets)


def _permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of range(n) from the OS CSPRNG: the order of 64-bit random
    keys (ties, probability below n²/2^65, keep their order)."""
    return np.argsort(np.frombuffer(secrets.token_bytes(8 * n), dtype=np.uint64), kind="stable")


def assign_slots(groups: Sequence) -> Slots:
    distinct = list(dict.fromkeys(groups))
    _rng.shuffle(distinct)
    number = {g: i for i, g in enumerate(distinct)}
    n = len(groups)
    slots = _permutation(n)
    group_no = np.fromiter((number[g] for g in groups), dtype=np.int64, count=n)
    layout = np.zeros(n, dtype="<u4")
    layout[slots] = group_no
    return Slots(slots.tolist(), group_no.tolist(), distinct, layout)


def send_lists(runtime, kind: str, job_id: str, providers: Sequence[str], slots: Sequence[int],
               ids: Sequence[str], pubctx: bytes) -> Iterator:
    """Per provider: its sealed (slot, identifier) list in random order, and the signed binding."""
    for provider in providers:
        items = [(slots[i], ids[i]) for i in _permutation(len(ids)).tolist()]
        sealed = sealed_list(items, runtime.peer_keys(provider).x25519_public, aad(kind, job_id, provider))
        yield from blob_chunks(schema.sealed_stream(provider), sealed)
        yield from blob_chunks(schema.binding_stream(provider),
                               runtime.sm2.sign(binding(kind, job_id, provider, pubctx, sealed)))
