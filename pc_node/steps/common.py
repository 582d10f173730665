"""Helpers for streaming steps: chunking, reading chunk streams, done/progress messages."""
from __future__ import annotations

import datetime as dt
import json
from typing import Iterable, Iterator

from pc_common.errors import InvalidInput
from pc_common.pb import common_pb2, node_pb2
from pc_common.wire import blob_chunks, chunks, read_blob, read_stream  # noqa: F401 (step helpers)


def done(summary: dict | None = None, payload: bytes = b"") -> node_pb2.StepMessage:
    return node_pb2.StepMessage(done=node_pb2.StepDone(summary={k: str(v) for k, v in (summary or {}).items()},
                                                       payload=payload))


def progress(step: str, party: str, n: int, total: int) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(progress=common_pb2.Progress(step=step, party=party, done=n, total=total))


def pass_through(messages: Iterable[node_pb2.StepMessage]) -> Iterator[node_pb2.StepMessage]:
    yield from messages


def hours_from_now(hours: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def store_results(runtime, job_id: str, csv_text: str, rows: int, summary: dict) -> None:
    """Keep a job's results file at this node (SM4-GCM at rest) until the results expire."""
    runtime.store.put_blob("results", job_id, json.dumps({"csv": csv_text, "rows": rows, "summary": summary}).encode(),
                           expires_at=hours_from_now(runtime.config.results_ttl_hours))
