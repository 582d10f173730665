"""Wire limits and chunk framing of the ``Node.Step`` streams, shared by node and coordinator.

Bulk data moves as ``DataChunk`` messages of at most :data:`CHUNK_BYTES` with per-stream
sequence numbers. Parties build them with :func:`chunks` / :func:`blob_chunks` (or
:class:`ChunkWriter` for a stream produced piece by piece) and read them with
:func:`read_stream` / :func:`read_blob`; the coordinator sends with :func:`send_blobs`
and collects a step's answer with :func:`collect_blobs`. Every reader refuses gaps,
duplicates, truncation and oversize streams with :class:`InvalidInput`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from pc_common.errors import InvalidInput
from pc_common.pb import common_pb2, node_pb2

#: Largest ``data`` of one chunk; gRPC's message limit (``tls.MAX_MESSAGE_BYTES``) is above it.
CHUNK_BYTES = 1 << 20
#: Largest logical stream (one blob) a party accepts from a peer.
MAX_BLOB = 2 << 30
#: Bytes of one encoded PSI group element (X25519 u-coordinate or compressed SM2 x).
POINT_LEN = 32
#: Members of one group (household) a verification accepts.
MAX_GROUP = 16
#: Bound on one subject's value per criterion (cents, or a record count): 100 million yuan.
MAX_VALUE_CENTS = 10**10


def chunks(stream: str, data: bytes, item_size: int, count: int) -> Iterator[node_pb2.StepMessage]:
    """Cut ``count`` fixed-size items into chunk messages of at most CHUNK_BYTES."""
    per = max(1, CHUNK_BYTES // item_size)
    if count == 0:
        yield _chunk(stream, 0, 0, b"", True)
        return
    for seq, start in enumerate(range(0, count, per)):
        n = min(per, count - start)
        yield _chunk(stream, seq, n, bytes(data[start * item_size:(start + n) * item_size]), start + n >= count)


def blob_chunks(stream: str, blob: bytes) -> Iterator[node_pb2.StepMessage]:
    """Variable-size payload (sealed envelope, serialized ciphertexts) cut into pieces."""
    if not blob:
        yield _chunk(stream, 0, 0, b"", True)
        return
    for seq, start in enumerate(range(0, len(blob), CHUNK_BYTES)):
        part = blob[start:start + CHUNK_BYTES]
        yield _chunk(stream, seq, len(part), part, start + CHUNK_BYTES >= len(blob))


class ChunkWriter:
    """Chunk messages of one stream produced piece by piece (PSI points as they are computed).

    ``chunk(data)`` numbers each piece (at most CHUNK_BYTES, ``len(data) // item_size`` items);
    ``end()`` is the empty last chunk that closes the stream.
    """

    def __init__(self, stream: str, item_size: int = POINT_LEN):
        self.stream, self.item_size, self.seq = stream, item_size, 0

    def chunk(self, data: bytes) -> node_pb2.StepMessage:
        msg = _chunk(self.stream, self.seq, len(data) // self.item_size, data, False)
        self.seq += 1
        return msg

    def end(self) -> node_pb2.StepMessage:
        msg = _chunk(self.stream, self.seq, 0, b"", True)
        self.seq += 1
        return msg


def _chunk(stream: str, seq: int, count: int, data: bytes, last: bool) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=seq, count=count, data=data, last=last))


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


def read_blob(inbound: Iterator[node_pb2.StepMessage], stream: str, limit: int = MAX_BLOB) -> bytes:
    parts, size = [], 0
    for c in read_stream(inbound, stream):
        size += len(c.data)
        if size > limit:
            raise InvalidInput(f"stream '{stream}' is larger than allowed")
        parts.append(c.data)
    return b"".join(parts)


def send_blobs(head: list[node_pb2.StepMessage], blobs: dict[str, bytes]) -> Iterator[node_pb2.StepMessage]:
    """The messages of one step: its header(s), then each blob as one chunk stream."""
    yield from head
    for name, blob in blobs.items():
        yield from blob_chunks(name, blob)


Progress = Callable[[common_pb2.Progress], None]


def collect_blobs(peer: str, answers: Iterable[node_pb2.StepMessage], on_progress: Progress | None = None):
    """Read one step's answer: returns ``(done message, {stream: bytes})``.

    Progress messages go to ``on_progress``; chunks are checked for order and size.
    """
    parts: dict[str, list[bytes]] = {}
    seqs: dict[str, int] = {}
    sizes: dict[str, int] = {}
    done = None
    for msg in answers:
        kind = msg.WhichOneof("kind")
        if kind == "progress":
            if on_progress is not None:
                on_progress(msg.progress)
        elif kind == "chunk":
            c = msg.chunk
            if c.seq != seqs.get(c.stream, 0):
                raise InvalidInput(f"node '{peer}' sent chunks of '{c.stream}' out of order")
            seqs[c.stream] = c.seq + 1
            sizes[c.stream] = sizes.get(c.stream, 0) + len(c.data)
            if sizes[c.stream] > MAX_BLOB:
                raise InvalidInput(f"node '{peer}' sent too much data")
            parts.setdefault(c.stream, []).append(c.data)
        elif kind == "done":
            done = msg.done
    if done is None:
        raise InvalidInput(f"node '{peer}' ended the step without finishing it")
    return done, {k: b"".join(v) for k, v in parts.items()}
