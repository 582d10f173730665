"""Driving lookup steps by hand, as a (deviating) coordinator would: signed specs from the
requester node, step headers, the requester's signed binding of a blinded stream, chunks.

Used by tests/integration/test_lookup.py and tests/security/test_lookup_oracles.py.
"""
from __future__ import annotations

import hashlib
import json
import struct

from pc_common import gm
from pc_common.pb import common_pb2, node_pb2
from pc_node.psi.lookup_format import binding_message


def requester_key(fed, requester: str) -> gm.Sm2PrivateKey:
    """The requester node's SM2 key (the tests play its software when they sign a binding)."""
    return gm.Sm2PrivateKey.from_hex((fed.certs / "nodes" / requester / "sm2.key").read_text().strip())


def signed_lookup(node_stub, datasets: list[str], labels=(), masked=False) -> tuple[node_pb2.SignedJobSpec, str]:
    """A lookup spec prepared and signed by the requester node (``node_stub``: its Node stub)."""
    signed = node_stub.PrepareJob(node_pb2.PrepareJobRequest(kind="lookup", params=json.dumps(
        {"datasets": datasets, "purpose": "data_matching", "labels": list(labels), "masked": masked}).encode()),
        timeout=10)
    requester = datasets[0].split(".")[0]
    return (node_pb2.SignedJobSpec(spec=signed.spec, signature=signed.signature, signer=requester),
            json.loads(signed.spec)["job_id"])


def header(signed, job_id: str, step: str, params: dict | None = None) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step=step, spec=signed,
                                                           params=params or {}))


def chunk(stream: str, seq: int, data: bytes, count: int, last: bool = False) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=seq, count=count, data=data, last=last))


def blob(stream: str, data: bytes) -> list[node_pb2.StepMessage]:
    return [chunk(stream, 0, data, len(data), last=True)]


def binding(key: gm.Sm2PrivateKey, job_id: str, provider: str, epoch: str,
            parts: list[tuple[bytes, int]]) -> list[node_pb2.StepMessage]:
    """The ``binding`` stream the requester sends with its blinded chunks ``(data, count)``."""
    message = binding_message(job_id, provider, epoch, [(n, hashlib.sha256(d).digest()) for d, n in parts])
    return blob("binding", struct.pack(">I", len(message)) + message + key.sign(message))


def points_in(messages, stream: str = "out") -> int:
    return sum(m.chunk.count for m in messages if m.WhichOneof("kind") == "chunk" and m.chunk.stream == stream)


def stream_data(messages, stream: str) -> list[tuple[bytes, int]]:
    return [(m.chunk.data, m.chunk.count) for m in messages
            if m.WhichOneof("kind") == "chunk" and m.chunk.stream == stream and (m.chunk.data or m.chunk.count)]


def summary(messages) -> dict:
    return dict(messages[-1].done.summary)
