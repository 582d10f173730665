"""Helpers for streaming steps: chunking, reading chunk streams, done/progress messages."""
from __future__ import annotations

import datetime as dt
import json
from typing import Iterable, Iterator

from pc_common.errors import InvalidInput
from pc_common.pb import common_pb2, node_pb2
from pc_common.tls import CHUNK_BYTES


def done(summary: dict | None = None, payload: bytes = b"") -> node_pb2.StepMessage:
    return node_pb2.StepMessage(done=node_pb2.StepDone(summary={k: str(v) for k, v in (summary or {}).items()},
                                                       payload=payload))


def progress(step: str, party: str, n: int, total: int) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(progress=common_pb2.Progress(step=step, party=party, done=n, total=total))


def chunks(stream: str, data: bytes, item_size: int, count: int) -> Iterator[node_pb2.StepMessage]:
    """Cut ``count`` fixed-size items into chunk messages of at most CHUNK_BYTES."""
    per = max(1, CHUNK_BYTES // item_size)
    seq = 0
    if count == 0:
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=0, count=0, data=b"", last=True))
        return
    for start in range(0, count, per):
        n = min(per, count - start)
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(
            stream=stream, seq=seq, count=n, data=bytes(data[start * item_size:(start + n) * item_size]),
            last=start + n >= count))
        seq += 1


def blob_chunks(stream: str, blob: bytes) -> Iterator[node_pb2.StepMessage]:
    """Variable-size payload (sealed envelope, serialized ciphertexts) cut into pieces."""
    if not blob:
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=0, count=0, data=b"", last=True))
        return
    seq = 0
    for start in range(0, len(blob), CHUNK_BYTES):
        part = blob[start:start + CHUNK_BYTES]
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=seq, count=len(part), data=part,
                                                              last=start + CHUNK_BYTES >= len(blob)))
        seq += 1


def read_stream(inbound: Iterator[node_pb2.StepMessage], stream: str) -> Iterator[common_pb2.DataChunk]:
    """Yield the chunks of one logical stream in order; refuse gaps, duplicates, truncation."""
    expected = 0
    for msg in inbound:
        if msg.WhichOneof("kind") != "chunk":
            raise InvalidInput(f"expected a data chunk of stream '{stream}'")
        c = msg.chunk
        if c.stream != stream:
            raise InvalidInput(f"expected stream '{stream}', got another")
        if c.seq != expected:
            raise InvalidInput(f"stream '{stream}': chunk {c.seq} arrived where {expected} was expected "
                               "(duplicated, reordered or missing chunk)")
        expected += 1
        yield c
        if c.last:
            return
    raise InvalidInput(f"stream '{stream}' ended before its last chunk (truncated)")


def read_blob(inbound: Iterator[node_pb2.StepMessage], stream: str, limit: int = 1 << 31) -> bytes:
    parts, size = [], 0
    for c in read_stream(inbound, stream):
        size += len(c.data)
        if size > limit:
            raise InvalidInput(f"stream '{stream}' is larger than allowed")
        parts.append(c.data)
    return b"".join(parts)


def pass_through(messages: Iterable[node_pb2.StepMessage]) -> Iterator[node_pb2.StepMessage]:
    yield from messages


def hours_from_now(hours: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def store_results(runtime, job_id: str, csv_text: str, rows: int, summary: dict) -> None:
    """Keep a job's results file at this node (SM4-GCM at rest) until the results expire."""
    runtime.store.put_blob("results", job_id, json.dumps({"csv": csv_text, "rows": rows, "summary": summary}).encode(),
                           expires_at=hours_from_now(runtime.config.results_ttl_hours))
