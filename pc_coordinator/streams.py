"""Relay helpers: send blobs as chunk streams to a node and collect what it streams back.

Progress messages from nodes go to the job's progress; ``done`` ends a step.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from pc_common.errors import InvalidInput
from pc_common.pb import node_pb2
from pc_coordinator.runner import JobContext
from pc_node.steps.common import blob_chunks

MAX_BLOB = 2 << 30


def send_blobs(head: list[node_pb2.StepMessage], blobs: dict[str, bytes]) -> Iterator[node_pb2.StepMessage]:
    yield from head
    for name, blob in blobs.items():
        yield from blob_chunks(name, blob)


def collect_blobs(ctx: JobContext, node: str, messages: Iterable[node_pb2.StepMessage]):
    """Run one step; return (done message, {stream: bytes})."""
    parts: dict[str, list[bytes]] = {}
    seqs: dict[str, int] = {}
    sizes: dict[str, int] = {}
    done = None
    for msg in ctx.step(node, messages):
        kind = msg.WhichOneof("kind")
        if kind == "progress":
            p = msg.progress
            ctx.progress(p.step, node, p.done, p.total)
        elif kind == "chunk":
            c = msg.chunk
            if c.seq != seqs.get(c.stream, 0):
                raise InvalidInput(f"node '{node}' sent chunks of '{c.stream}' out of order")
            seqs[c.stream] = c.seq + 1
            sizes[c.stream] = sizes.get(c.stream, 0) + len(c.data)
            if sizes[c.stream] > MAX_BLOB:
                raise InvalidInput(f"node '{node}' sent too much data")
            parts.setdefault(c.stream, []).append(c.data)
        elif kind == "done":
            done = msg.done
    if done is None:
        raise InvalidInput(f"node '{node}' ended the step without finishing it")
    return done, {k: b"".join(v) for k, v in parts.items()}
