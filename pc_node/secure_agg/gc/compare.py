"""Secure comparison of masked values by a garbled circuit: C garbles, R evaluates.

The coordinator C (garbler) holds masks (:mod:`.masking`), the key holder R
(evaluator) the masked decryptions. One circuit (:func:`.spec.build_circuit`) computes,
per instance (household) and criterion, the pass bit of x < T (or its negation)
and releases either their AND (``reveal="verdict"``) or all of them
(``reveal="reasons"``). Only output wires get decoding bits, so R learns exactly
those bits; C learns nothing (it never sees an output or R's input bits).

Rounds (two round trips, each method callable once; every message has a fixed
size, :func:`message_layout`)::

    m1 = e.start()           R -> C   base-OT sender's point A
    m2 = g.respond(m1)       C -> R   128 base-OT receiver points
    m3 = e.extend(m2)        R -> C   IKNP matrix u (16 bytes per R input bit)
    m4 = g.garble(m3)        C -> R   OT ciphertexts, C's input labels, garbled
                                      tables, output decoding bits
    bits = e.evaluate(m4)    (N,) bool (verdict) or (N, K) bool (reasons)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pc_common.errors import InvalidInput

from . import ot
from .garble import evaluate_chunk, garble_chunk, permute_bits
from .masking import (
    IntegerEvaluatorInput,
    IntegerGarblerInput,
    ModularEvaluatorInput,
    ModularGarblerInput,
)
from .primitives import (U64, Rng, SessionStateError, Steps, Tccr, as_buffer, default_rng, draw, pack_header,
                         parse_header, prg)
from .spec import CircuitSpec

_MAGIC = b"PCGC"
_VERSION = 1
_HEADER = "<4sBBHII16s"  # magic, version, round, reserved, count, reserved, spec digest
HEADER_SIZE = 32
MAX_INSTANCES = (1 << 32) - 1
DEFAULT_CHUNK = 4096  # instances per garbling chunk (a multiple of 128)


# ---------------------------------------------------------------- inputs


def _bit_columns(v: np.ndarray, width: int) -> np.ndarray:
    return ((v[:, None] >> np.arange(width, dtype=U64)) & np.uint64(1)).astype(np.bool_)


def _unsigned(x, n: int, bits: int, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or a.size != n:
        raise InvalidInput(f"{what}: expected a 1-D integer array, one entry per instance")
    if (a < 0).any() or (a.astype(U64) >> np.uint64(bits)).any():
        raise InvalidInput(f"{what}: value wider than the criterion's bits")
    return a.astype(U64)


def _flags(x, n: int, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n,) or a.dtype != np.bool_:
        raise InvalidInput(f"{what}: expected a bool array, one entry per instance")
    return a


_KINDS = {
    (True, "integer"): IntegerGarblerInput,
    (True, "modular"): ModularGarblerInput,
    (False, "integer"): IntegerEvaluatorInput,
    (False, "modular"): ModularEvaluatorInput,
}


def _fields(inp, garbler: bool, mode: str) -> list[tuple[str, object]]:
    """(kind, array) per input field in circuit order: "word" = l bits LSB first, "flag" = 1 bit."""
    if mode == "integer":
        return [("word", inp.beta), ("flag", inp.r_bit)] if garbler else [("word", inp.alpha), ("flag", inp.d_bit)]
    return [("word", inp.a), ("word", inp.b), ("flag", inp.wrap)] if garbler else [("word", inp.d)]


def _input_bits(spec: CircuitSpec, inputs: Sequence, garbler: bool) -> np.ndarray:
    """One party's circuit input bits, (n, bits per instance) bool, in the circuit's wire order."""
    if len(inputs) != len(spec.criteria):
        raise InvalidInput("one input object per criterion is required")
    cols, n = [], None
    for c, inp in zip(spec.criteria, inputs):
        if not isinstance(inp, _KINDS[(garbler, c.mode)]):
            raise InvalidInput("input object does not match the criterion's mode or party")
        for kind, value in _fields(inp, garbler, c.mode):
            if n is None:
                n = np.asarray(value).size
                if not 1 <= n <= MAX_INSTANCES:
                    raise InvalidInput("instance count out of range")
            if kind == "word":
                cols.append(_bit_columns(_unsigned(value, n, c.bits, "criterion input"), c.bits))
            else:
                cols.append(_flags(value, n, "criterion input")[:, None])
    return np.ascontiguousarray(np.concatenate(cols, axis=1))


# ---------------------------------------------------------------- messages


def message_layout(spec: CircuitSpec, count: int, round_no: int) -> dict[str, tuple[int, int]]:
    """Sections of message ``round_no`` (1..4) for ``count`` instances: name -> (offset, size)."""
    if round_no not in (1, 2, 3, 4):
        raise InvalidInput("comparison round must be 1..4")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_INSTANCES:
        raise InvalidInput("instance count out of range")
    cir = spec.circuit
    parts = [("header", HEADER_SIZE), ("ot", ot.message_size(count * cir.n_evaluator, round_no))]
    if round_no == 4:
        parts += [
            ("garbler_labels", count * cir.n_garbler * 16),
            ("tables", cir.n_and * 2 * count * 16),
            ("decoding", -(-count * cir.n_outputs // 8)),
        ]
    out, off = {}, 0
    for name, size in parts:
        out[name] = (off, size)
        off += size
    return out


def message_size(spec: CircuitSpec, count: int, round_no: int) -> int:
    off, size = list(message_layout(spec, count, round_no).values())[-1]
    return off + size


def _header(spec: CircuitSpec, round_no: int, count: int) -> bytes:
    return pack_header(_HEADER, _MAGIC, _VERSION, round_no, 0, count, 0, spec.digest)


def _open(spec: CircuitSpec, data, round_no: int, count: int) -> memoryview:
    what = f"comparison message {round_no}"
    mv = as_buffer(data, what)
    magic, version, rnd, res1, n, res2, digest = parse_header(_HEADER, mv, what)
    if magic != _MAGIC or version != _VERSION or res1 or res2:
        raise InvalidInput(f"{what}: not a comparison message of this version")
    if rnd != round_no:
        raise InvalidInput(f"{what}: wrong round")
    if digest != spec.digest:
        raise InvalidInput(f"{what}: built for another comparison circuit")
    if n != count:
        raise InvalidInput(f"{what}: instance count differs from this session's")
    if len(mv) != message_size(spec, count, round_no):
        raise InvalidInput(f"{what}: wrong size")
    return mv


def _context(spec: CircuitSpec, count: int) -> bytes:
    return spec.digest + count.to_bytes(4, "little")


def _chunks(count: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, count)) for lo in range(0, count, chunk)]


def _run(fn: Callable[[int, int], None], spans: list[tuple[int, int]], workers: int) -> None:
    if workers <= 1 or len(spans) == 1:
        for lo, hi in spans:
            fn(lo, hi)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(fn, lo, hi) for lo, hi in spans]:
            f.result()


def _settings(workers: int | None, chunk: int | None) -> tuple[int, int]:
    w = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    c = DEFAULT_CHUNK if chunk is None else int(chunk)
    if w < 1 or c < 128 or c % 128:
        raise InvalidInput("workers must be >= 1 and chunk a positive multiple of 128")
    return w, c


# ---------------------------------------------------------------- sessions


class ComparisonGarbler:
    """C's side of one batch. ``inputs``: one Integer/ModularGarblerInput per criterion."""

    def __init__(self, spec: CircuitSpec, inputs: Sequence, *, rng: Rng | None = None,
                 workers: int | None = None, chunk: int | None = None) -> None:
        self.spec = spec
        self._circuit = spec.circuit
        self._bits = _input_bits(spec, inputs, garbler=True)
        self.count = self._bits.shape[0]
        self._workers, self._chunk = _settings(workers, chunk)
        rng = default_rng(rng)
        delta = bytearray(draw(rng, 16))
        delta[0] |= 1  # lsb(Δ) = 1: point-and-permute
        self._delta = np.frombuffer(bytes(delta), dtype=U64).copy()
        self._label_seed = draw(rng, 16)
        self._ot = ot.OtSender(self.count * self._circuit.n_evaluator, rng=rng, context=_context(spec, self.count))
        self._steps = Steps("respond", "garble")
        self._out0: np.ndarray | None = None

    def respond(self, msg1) -> bytes:
        self._steps.enter("respond")
        mv = _open(self.spec, msg1, 1, self.count)
        return _header(self.spec, 2, self.count) + self._ot.respond(mv[HEADER_SIZE:])

    def garble(self, msg3) -> bytes:
        self._steps.enter("garble")
        mv = _open(self.spec, msg3, 3, self.count)
        enc = self._ot.begin_send(mv[HEADER_SIZE:])
        gc_key = self._ot.derive_key(b"gc-hash")
        cir, n_total, delta = self._circuit, self.count, self._delta
        ng, ne, no = cir.n_garbler, cir.n_evaluator, cir.n_outputs
        layout = message_layout(self.spec, n_total, 4)
        buf = np.empty(message_size(self.spec, n_total, 4), dtype=np.uint8)
        buf[:HEADER_SIZE] = np.frombuffer(_header(self.spec, 4, n_total), dtype=np.uint8)

        def section(name: str) -> np.ndarray:
            off, size = layout[name]
            return buf[off:off + size]

        ot_sec = section("ot")
        ot_sec[: ot.HEADER_SIZE] = np.frombuffer(ot.frame(4, n_total * ne), dtype=np.uint8)
        y_out = ot_sec[ot.HEADER_SIZE:].view(U64).reshape(n_total * ne, 2, 2)
        g_out = section("garbler_labels").view(U64).reshape(n_total, ng, 2)
        tables = section("tables").view(U64).reshape(cir.n_and, 2, n_total, 2)
        dec_out = section("decoding")
        dec_out[-1:] = 0
        out_zero = np.empty((n_total, no, 2), dtype=U64)

        def work(lo: int, hi: int) -> None:
            n = hi - lo
            zero = prg(self._label_seed, n * (ng + ne) * 16, lo * (ng + ne)).view(U64).reshape(n, ng + ne, 2)
            gz, ez = zero[:, :ng], zero[:, ng:]
            sel = np.negative(self._bits[lo:hi].astype(U64))[..., None]  # all-ones where the bit is 1
            g_out[lo:hi] = gz ^ (sel & delta)
            m0 = np.ascontiguousarray(ez).reshape(n * ne, 2)
            y_out[lo * ne:hi * ne] = enc.encrypt(lo * ne, hi * ne, m0, m0 ^ delta)
            out0 = garble_chunk(cir, Tccr(gc_key), delta, gz.transpose(1, 0, 2), ez.transpose(1, 0, 2),
                                lo, tables[:, :, lo:hi])
            out_zero[lo:hi] = out0.transpose(1, 0, 2)
            bits = np.packbits(permute_bits(out0).T.reshape(-1), bitorder="little")
            dec_out[lo * no // 8: lo * no // 8 + bits.size] = bits

        _run(work, _chunks(n_total, self._chunk), self._workers)
        self._out0 = out_zero
        return buf.tobytes()

    def output_labels(self, value: bool) -> np.ndarray:
        """After :meth:`garble`: the label of every output wire that encodes ``value``,
        (count, n_outputs, 2) uint64 — for output-keyed releases (``secure_agg.query_release``):
        R holds exactly the label of the bit it learned, never the other one."""
        if self._out0 is None:
            raise SessionStateError("output labels exist only after garble")
        return self._out0 ^ self._delta if value else self._out0.copy()


class ComparisonEvaluator:
    """R's side of one batch. ``inputs``: one Integer/ModularEvaluatorInput per criterion."""

    def __init__(self, spec: CircuitSpec, inputs: Sequence, *, rng: Rng | None = None,
                 workers: int | None = None, chunk: int | None = None) -> None:
        self.spec = spec
        self._circuit = spec.circuit
        bits = _input_bits(spec, inputs, garbler=False)
        self.count = bits.shape[0]
        self._workers, self._chunk = _settings(workers, chunk)
        self._ot = ot.OtReceiver(bits.reshape(-1), rng=default_rng(rng), context=_context(spec, self.count))
        self._steps = Steps("start", "extend", "evaluate")
        self._out: np.ndarray | None = None

    def start(self) -> bytes:
        self._steps.enter("start")
        return _header(self.spec, 1, self.count) + self._ot.start()

    def extend(self, msg2) -> bytes:
        self._steps.enter("extend")
        mv = _open(self.spec, msg2, 2, self.count)
        return _header(self.spec, 3, self.count) + self._ot.extend(mv[HEADER_SIZE:])

    def evaluate(self, msg4) -> np.ndarray:
        self._steps.enter("evaluate")
        mv = _open(self.spec, msg4, 4, self.count)
        cir, n_total = self._circuit, self.count
        ng, ne, no = cir.n_garbler, cir.n_evaluator, cir.n_outputs
        layout = message_layout(self.spec, n_total, 4)

        def section(name: str) -> np.ndarray:
            off, size = layout[name]
            return np.frombuffer(mv[off:off + size], dtype=np.uint8)

        off, size = layout["ot"]
        y_body = ot.open_message(mv[off:off + size], 4, n_total * ne)  # checks the embedded OT header
        dec = self._ot.begin_receive()
        gc_key = self._ot.derive_key(b"gc-hash")
        y = np.frombuffer(y_body, dtype=U64).reshape(n_total * ne, 2, 2)
        g_in = section("garbler_labels").view(U64).reshape(n_total, ng, 2)
        tables = section("tables").view(U64).reshape(cir.n_and, 2, n_total, 2)
        decoding = np.unpackbits(section("decoding"), bitorder="little")
        if decoding[n_total * no:].any():
            raise InvalidInput("comparison message 4: padding bits set")
        decoding = decoding[: n_total * no].reshape(n_total, no).astype(np.bool_)
        result = np.empty((n_total, no), dtype=np.bool_)
        held = np.empty((n_total, no, 2), dtype=U64)

        def work(lo: int, hi: int) -> None:
            n = hi - lo
            ev = dec.decrypt(lo * ne, hi * ne, y[lo * ne:hi * ne]).reshape(n, ne, 2)
            out = evaluate_chunk(cir, Tccr(gc_key), g_in[lo:hi].transpose(1, 0, 2), ev.transpose(1, 0, 2),
                                 lo, tables[:, :, lo:hi])
            held[lo:hi] = out.transpose(1, 0, 2)
            result[lo:hi] = permute_bits(out).T ^ decoding[lo:hi]

        _run(work, _chunks(n_total, self._chunk), self._workers)
        self._out = held
        return result[:, 0].copy() if self.spec.reveal == "verdict" else result

    def output_labels(self) -> np.ndarray:
        """After :meth:`evaluate`: the output-wire labels R holds, (count, n_outputs, 2) uint64."""
        if self._out is None:
            raise SessionStateError("output labels exist only after evaluate")
        return self._out.copy()
