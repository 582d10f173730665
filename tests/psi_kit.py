"""Driving a node's PSI steps as a (deviating) coordinator would: headers, chunks, the
requester's real blinded stream, and opening what a node sealed (tests hold every node's keys).
Used by tests/integration/test_psi.py and tests/security/test_psi_oracles.py."""
from __future__ import annotations

import json

from pc_common.pb import common_pb2, node_pb2
from pc_node import envelope
from pc_node.steps import psi as psi_steps

BASE_POINT = bytes([9]) + bytes(31)     # X25519 generator: a valid prime-order element


def header(signed: node_pb2.SignedJobSpec, step: str, params: dict | None = None) -> node_pb2.StepMessage:
    job_id = json.loads(signed.spec)["job_id"]
    return node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step=step, spec=signed,
                                                           params=params or {}))


def chunk(seq: int, data: bytes, count: int | None = None, last: bool = False, stream: str = "in"):
    return node_pb2.StepMessage(chunk=common_pb2.DataChunk(
        stream=stream, seq=seq, count=len(data) // 32 if count is None else count, data=data, last=last))


def chunks_of(msgs) -> list[node_pb2.StepMessage]:
    return [m for m in msgs if m.WhichOneof("kind") == "chunk"]


def renamed(msgs, names: dict[str, str]) -> list[node_pb2.StepMessage]:
    out = []
    for m in chunks_of(msgs):
        c = node_pb2.StepMessage()
        c.CopyFrom(m)
        c.chunk.stream = names.get(c.chunk.stream, c.chunk.stream)
        out.append(c)
    return out


def points(msgs, stream: str = "out") -> bytes:
    return b"".join(m.chunk.data for m in chunks_of(msgs) if m.chunk.stream == stream)


def blind(req_stub, signed) -> list[node_pb2.StepMessage]:
    """The requester's real ``psi.blind`` answer (points on ``out``, its signature on ``binding``)."""
    return list(req_stub.Step(iter([header(signed, "psi.blind")]), timeout=30))


def as_hop_input(blind_answer) -> list[node_pb2.StepMessage]:
    return renamed(blind_answer, {"out": "in"})


def hop_header(signed, shuffle: bool = False, chain: str = "") -> node_pb2.StepMessage:
    return header(signed, "psi.hop", {"shuffle": "1" if shuffle else "0", "label": "test", "chain": chain})


def open_sealed(runtime, job_id: str, stream_id: str, msgs, name: str = "sealed") -> tuple[bytes, bytes]:
    """(payload, signature) of a sealed stream, opened with the recipient node's key."""
    parts, signature = [], b""
    for m in chunks_of(msgs):
        c = m.chunk
        if c.stream != name:
            continue
        plain = envelope.open_envelope(runtime.x25519_private, c.data,
                                       psi_steps._aad(job_id, stream_id, c.seq, c.last))
        if c.last:
            signature = plain
        else:
            parts.append(plain)
    return b"".join(parts), signature
