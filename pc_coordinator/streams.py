"""Relay helpers: one step's answer collected with progress, and node-to-node stream relays."""
from __future__ import annotations

from typing import Iterable, Iterator

from pc_common import steps_schema as schema
from pc_common import wire
from pc_common.errors import InvalidInput, PcError
from pc_common.pb import node_pb2
from pc_common.wire import send_blobs  # noqa: F401 (orchestrators send with it)
from pc_coordinator.runner import JobContext


def collect_blobs(ctx: JobContext, node: str, messages: Iterable[node_pb2.StepMessage]):
    """Run one step at ``node``; return (done message, {stream: bytes})."""
    return wire.collect_blobs(node, ctx.step(node, messages),
                              lambda p: ctx.progress(p.step, node, p.done, p.total))


def subject_lists(blobs: dict[str, bytes], providers: list[str]) -> tuple[bytes, bytes, dict[str, dict[str, bytes]]]:
    """From a requester's prepare answer (verification, query): the public key, the layout and,
    per provider, the streams its evaluate step takes (key, sealed list, signed binding).
    A missing stream fails the job with a reason naming it."""
    needed = ["pubctx", "layout"] + [name for p in providers
                                     for name in (schema.sealed_stream(p), schema.binding_stream(p))]
    missing = [name for name in needed if name not in blobs]
    if missing:
        raise InvalidInput(f"the requester's node did not send {', '.join(missing)}")
    pubctx = blobs["pubctx"]
    lists = {p: {"pubctx": pubctx, "sealed": blobs[schema.sealed_stream(p)],
                 "binding": blobs[schema.binding_stream(p)]} for p in providers}
    return pubctx, blobs["layout"], lists


class Relay:
    """Forward one node's output stream into another's input, renaming the stream.

    Errors raised while gRPC pulls from this iterator would be lost (the downstream call is
    just cancelled), so they are kept in ``error`` and re-raised by the orchestrator
    (:func:`raise_first`).
    """

    def __init__(self, ctx: JobContext, node: str, source: Iterable[node_pb2.StepMessage], rename: dict[str, str]):
        self.ctx, self.node, self.source, self.rename = ctx, node, source, rename
        self.error: BaseException | None = None
        self.count = 0
        self.done: node_pb2.StepDone | None = None

    def __iter__(self) -> Iterator[node_pb2.StepMessage]:
        try:
            for msg in self.source:
                kind = msg.WhichOneof("kind")
                if kind == "chunk":
                    target = self.rename.get(msg.chunk.stream)
                    if target is None:
                        raise InvalidInput(f"node '{self.node}' sent an unexpected stream")
                    self.count += msg.chunk.count
                    msg.chunk.stream = target      # same chunk, renamed for the next node
                    yield msg
                elif kind == "progress":
                    p = msg.progress
                    self.ctx.progress(p.step, self.node, p.done, p.total)
                elif kind == "done":
                    self.done = msg.done
        except BaseException as exc:  # noqa: BLE001 - handed to the orchestrator
            self.error = exc
            raise


def raise_first(relays: list[Relay], exc: BaseException) -> None:
    """Re-raise the first domain error one of ``relays`` met (the real cause), else ``exc``."""
    for r in relays:
        if r.error is not None and isinstance(r.error, PcError):
            raise r.error from None
    raise exc
