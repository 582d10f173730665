"""Relay helpers: one step's answer collected with the job's progress reporting."""
from __future__ import annotations

from typing import Iterable

from pc_common import wire
from pc_common.pb import node_pb2
from pc_common.wire import send_blobs  # noqa: F401 (orchestrators send with it)
from pc_coordinator.runner import JobContext


def collect_blobs(ctx: JobContext, node: str, messages: Iterable[node_pb2.StepMessage]):
    """Run one step at ``node``; return (done message, {stream: bytes})."""
    return wire.collect_blobs(node, ctx.step(node, messages),
                              lambda p: ctx.progress(p.step, node, p.done, p.total))
