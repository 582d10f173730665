"""Helpers for streaming steps: chunking, reading chunk streams, done/progress messages."""
from __future__ import annotations

import json

from pc_common.clock import hours_from_now  # noqa: F401 (steps keep working data until then)
from pc_common.pb import common_pb2, node_pb2
from pc_common.steps_schema import Record
from pc_common.wire import ChunkWriter, blob_chunks, chunks, read_blob, read_stream  # noqa: F401 (step helpers)


def done(result: Record) -> node_pb2.StepMessage:
    """The last message of a step: its declared result (``pc_common.steps_schema``)."""
    return node_pb2.StepMessage(done=node_pb2.StepDone(summary=result.encode()))


def progress(step: str, party: str, n: int, total: int) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(progress=common_pb2.Progress(step=step, party=party, done=n, total=total))


def store_results(runtime, job_id: str, csv_text: str, rows: int, summary: dict) -> None:
    """Keep a job's results file at this node (SM4-GCM at rest) until the results expire."""
    runtime.store.put_blob("results", job_id, json.dumps({"csv": csv_text, "rows": rows, "summary": summary}).encode(),
                           expires_at=hours_from_now(runtime.config.results_ttl_hours))
