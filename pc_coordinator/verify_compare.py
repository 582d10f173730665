"""The coordinator's side of ``verify.compare``: mask the criterion sums, garble the comparison.

The coordinator C is the garbler, the requester node R (the key holder) the evaluator; see
``pc_node.secure_agg.verdict`` for the masking plan and docs/secure_comparison.md for the
circuit. C only adds plaintexts to ciphertexts (BFV: per-slot one-time pads; Paillier: group
sums plus a statistical mask, re-randomised), never multiplies, and sees no output bit.

gRPC's synchronous bidirectional call consumes the request iterator in another thread, so
requests go through a queue (:class:`Outbox`) that this thread fills as R's answers arrive.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput
from pc_common.pb import node_pb2
from pc_common.wire import MAX_BLOB, blob_chunks
from pc_coordinator.runner import Cancelled, JobContext
from pc_node.secure_agg import verdict
from pc_node.secure_agg.backend import CipherVector, HeBackend
from pc_node.secure_agg.gc import ComparisonGarbler

_GC_ANSWER_LIMIT = MAX_BLOB


class Outbox:
    """A request iterator fed from another thread; ``close()`` ends the stream (once what was
    put is read).

    ``maxsize`` bounds the messages waiting (0: unbounded): a producer faster than the stream's
    reader then waits, so gRPC's flow control reaches back to the node producing them. The wait
    ends with an error when ``stop`` is set (the job was cancelled) or at ``deadline`` (monotonic
    seconds: a reader that stopped reading). ``abandon()`` marks a reader that is gone for good
    (its step ended, or the job failed): puts then return at once and the iterator ends, so no
    thread is ever left waiting on a dead peer.
    """

    _POLL = 0.2
    _END = object()

    def __init__(self, maxsize: int = 0, stop: threading.Event | None = None, deadline: float | None = None) -> None:
        self._q: queue.Queue = queue.Queue(maxsize)
        self._stop, self._deadline = stop, deadline
        self._abandoned, self._closed = threading.Event(), threading.Event()

    def put(self, messages) -> None:
        for m in messages:
            while not self._abandoned.is_set():
                try:
                    self._q.put(m, timeout=self._POLL)
                    break
                except queue.Full:
                    self._check_waiting()

    def _check_waiting(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Cancelled("job was cancelled")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise InvalidInput("a node stopped reading its stream (the relay waited until the job's deadline)")

    def close(self) -> None:
        self._closed.set()
        try:
            self._q.put_nowait(self._END)    # the reader ends at once, not at its next poll
        except queue.Full:
            pass                             # it ends when it finds the queue empty

    def abandon(self) -> None:
        self._abandoned.set()

    def __iter__(self) -> Iterator[node_pb2.StepMessage]:
        while not self._abandoned.is_set():
            try:
                m = self._q.get(timeout=self._POLL)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if m is self._END:
                return
            yield m


def _read_blob(ctx: JobContext, node: str, answers: Iterator, stream: str, limit: int) -> bytes:
    parts, seq, size = [], 0, 0
    for msg in answers:
        kind = msg.WhichOneof("kind")
        if kind == "progress":
            p = msg.progress
            ctx.progress(p.step, node, p.done, p.total)
            continue
        if kind != "chunk" or msg.chunk.stream != stream or msg.chunk.seq != seq:
            raise InvalidInput(f"node '{node}' sent an unexpected message in the comparison (wanted '{stream}')")
        size += len(msg.chunk.data)
        if size > limit:
            raise InvalidInput(f"node '{node}' sent too much data")
        parts.append(msg.chunk.data)
        seq += 1
        if msg.chunk.last:
            return b"".join(parts)
    raise InvalidInput(f"node '{node}' ended the comparison early")


def _read_done(ctx: JobContext, node: str, answers: Iterator):
    for msg in answers:
        kind = msg.WhichOneof("kind")
        if kind == "progress":
            continue
        if kind == "done":
            return msg.done
        raise InvalidInput(f"node '{node}' sent data after the comparison")
    raise InvalidInput(f"node '{node}' ended the comparison without finishing it")


def mask_all(backend: HeBackend, rule, per_slot: dict[str, CipherVector], layout: np.ndarray,
             sizes: np.ndarray, n_groups: int):
    """Per criterion (rule order): the masked ciphertext for R, and C's circuit inputs."""
    pub = next(iter(per_slot.values())).public
    plans = verdict.plan(rule.criteria, backend.name, pub.plaintext_modulus)
    masked, g_inputs = [], []
    for c, p in zip(rule.criteria, plans):
        thr = verdict.thresholds(c, p, sizes)
        if backend.supports_group_sum:
            cv, g_in = verdict.mask_paillier(backend, per_slot[c.name], p, thr, layout, n_groups)
        else:
            cv, g_in = verdict.mask_bfv(backend, per_slot[c.name], p, thr, layout)
        masked.append(cv)
        g_inputs.append(g_in)
    return plans, masked, g_inputs


def run_compare(ctx: JobContext, requester: str, rule, plans, masked: list[CipherVector], g_inputs,
                n_groups: int, timings: dict[str, float]) -> schema.Rows:
    """Drive ``verify.compare`` at the requester; returns its answer (rows kept there)."""
    garbler = ComparisonGarbler(verdict.circuit_spec(plans, rule.reveal), g_inputs)
    out = Outbox()
    params = schema.CompareParams(groups=n_groups, criteria=tuple(p.name for p in plans))
    out.put([ctx.header("verify.compare", requester, params)])
    for p, cv in zip(plans, masked):
        out.put(blob_chunks(schema.masked_stream(p.name), cv.serialize()))
    garble = 0.0
    try:
        answers = iter(ctx.step(requester, out))
        m1 = _read_blob(ctx, requester, answers, schema.gc_stream(1), 1 << 16)
        t = time.perf_counter()
        m2 = garbler.respond(m1)
        garble += time.perf_counter() - t
        out.put(blob_chunks(schema.gc_stream(2), m2))
        m3 = _read_blob(ctx, requester, answers, schema.gc_stream(3), _GC_ANSWER_LIMIT)
        ctx.check_cancelled()
        t = time.perf_counter()
        m4 = garbler.garble(m3)
        garble += time.perf_counter() - t
        del m3
        out.put(blob_chunks(schema.gc_stream(4), m4))
        del m4
        out.close()
        answer = schema.decode_result("verify.compare", _read_done(ctx, requester, answers))
    finally:
        out.close()
        timings["garble_s"] = garble
    return answer


__all__ = ["Outbox", "mask_all", "run_compare"]
