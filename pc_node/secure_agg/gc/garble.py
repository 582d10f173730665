"""Boolean circuits and their SIMD garbling with half-gates.

Construction: Zahur, Rosulek and Evans, "Two Halves Make a Whole: Reducing Data
Transfer in Garbled Circuits using Half Gates" (EUROCRYPT 2015), with free-XOR
(Kolesnikov–Schneider, ICALP 2008) and point-and-permute (Beaver–Micali–Rogaway
1990): one global offset Δ with lsb(Δ) = 1, 128-bit labels, the zero-label of a
wire W^0 and its one-label W^0 ⊕ Δ, permute bit lsb(W^0). XOR and NOT are free; an
AND gate costs two ciphertexts (T_G, T_E), four hashes to garble and two to
evaluate. The hash is the TCCR hash of :mod:`.primitives`, with a tweak unique per
(instance, AND gate, half): high word 2·gate + half, low word the instance.

"SIMD": one circuit is garbled for N independent instances at once (the same Δ
for all of them, fresh labels per instance); a wire holds an (n, 2) uint64 array
of labels (the bytes of an (n, 16) uint8 array). Instances are processed in
chunks; within a chunk the AND gates of one AND-depth level are hashed together,
so Python loops run over gate levels, never over instances.

A NOT gate is an XOR with wire 0, the constant 1: its garbler zero-label is Δ and
its evaluator label is 0, so NOT costs nothing and sends nothing. Wire 0 is never
an AND input (the builder hands it to nobody).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pc_common.errors import InvalidInput

from .primitives import U64, Tccr, lsb_mask

_XOR, _AND = 0, 1


@dataclass(frozen=True)
class _Batch:
    kind: int
    a: np.ndarray
    b: np.ndarray
    out: np.ndarray
    gate_ids: np.ndarray | None  # AND ordinals (table rows), AND batches only


@dataclass(frozen=True)
class Circuit:
    """A levelled circuit. Wire 0 is the constant 1, then garbler inputs, evaluator inputs."""

    n_wires: int
    garbler_inputs: np.ndarray
    evaluator_inputs: np.ndarray
    outputs: np.ndarray
    n_and: int
    batches: tuple[_Batch, ...]

    @property
    def n_garbler(self) -> int:
        return int(self.garbler_inputs.size)

    @property
    def n_evaluator(self) -> int:
        return int(self.evaluator_inputs.size)

    @property
    def n_outputs(self) -> int:
        return int(self.outputs.size)

    def evaluate_plain(self, garbler_bits: np.ndarray, evaluator_bits: np.ndarray) -> np.ndarray:
        """Plaintext evaluation: (n, n_garbler) and (n, n_evaluator) bools -> (n, n_outputs)."""
        g, e = _bits(garbler_bits, self.n_garbler), _bits(evaluator_bits, self.n_evaluator)
        if g.shape[0] != e.shape[0]:
            raise InvalidInput("input bit arrays cover different instance counts")
        v = np.zeros((self.n_wires, g.shape[0]), dtype=np.bool_)
        v[0] = True
        v[self.garbler_inputs] = g.T
        v[self.evaluator_inputs] = e.T
        for bt in self.batches:
            v[bt.out] = (v[bt.a] & v[bt.b]) if bt.kind == _AND else (v[bt.a] ^ v[bt.b])
        return v[self.outputs].T.copy()


def _bits(x: np.ndarray, width: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != width or a.dtype != np.bool_:
        raise InvalidInput("input bits must be an (n, width) bool array")
    return a


class CircuitBuilder:
    """Build a circuit gate by gate; wires are ints. ``build()`` levels and batches it."""

    def __init__(self) -> None:
        self._n = 1  # wire 0: constant 1
        self._g: list[int] = []
        self._e: list[int] = []
        self._gates: list[tuple[int, int, int, int]] = []  # kind, a, b, out
        self._out: list[int] = []

    def _wire(self) -> int:
        self._n += 1
        return self._n - 1

    def _check(self, *ws: int) -> None:
        for w in ws:
            if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w < self._n:
                raise InvalidInput("unknown wire")

    def garbler_input(self) -> int:
        if self._gates:
            raise InvalidInput("declare inputs before gates")
        w = self._wire()
        self._g.append(w)
        return w

    def evaluator_input(self) -> int:
        if self._gates:
            raise InvalidInput("declare inputs before gates")
        w = self._wire()
        self._e.append(w)
        return w

    def _gate(self, kind: int, a: int, b: int) -> int:
        w = self._wire()
        self._gates.append((kind, a, b, w))
        return w

    def xor(self, a: int, b: int) -> int:
        self._check(a, b)
        return self._gate(_XOR, a, b)

    def and_(self, a: int, b: int) -> int:
        self._check(a, b)
        return self._gate(_AND, a, b)

    def not_(self, a: int) -> int:
        self._check(a)
        return self._gate(_XOR, a, 0)

    def output(self, w: int) -> None:
        self._check(w)
        self._out.append(w)

    def build(self) -> Circuit:
        if not self._out:
            raise InvalidInput("circuit has no outputs")
        level = np.zeros(self._n, dtype=np.int64)  # AND depth of each wire
        sub = np.zeros(self._n, dtype=np.int64)  # position among free gates of that level
        keys = []
        for kind, a, b, w in self._gates:
            la, lb = level[a], level[b]
            if kind == _AND:
                level[w], sub[w] = max(la, lb) + 1, 0
            else:
                lv = max(la, lb)
                level[w] = lv
                sub[w] = 1 + max(sub[a] if la == lv else 0, sub[b] if lb == lv else 0)
            keys.append((int(level[w]), int(sub[w])))
        groups: dict[tuple[int, int], list[int]] = {}
        for idx, key in enumerate(keys):
            groups.setdefault(key, []).append(idx)
        raw, n_and = [], 0
        for key in sorted(groups):
            gs = [self._gates[i] for i in groups[key]]
            cols = [np.array(c, dtype=np.intp) for c in zip(*gs)]
            ids = None
            if key[1] == 0:  # AND level
                ids = np.arange(n_and, n_and + len(gs), dtype=np.intp)
                n_and += len(gs)
            raw.append((_AND if key[1] == 0 else _XOR, cols[1], cols[2], cols[3], ids))
        slot, n_slots = self._allocate(raw)
        return Circuit(
            n_wires=n_slots,
            garbler_inputs=slot[np.array(self._g, dtype=np.intp)],
            evaluator_inputs=slot[np.array(self._e, dtype=np.intp)],
            outputs=slot[np.array(self._out, dtype=np.intp)],
            n_and=n_and,
            batches=tuple(_Batch(k, slot[a], slot[b], slot[o], ids) for k, a, b, o, ids in raw),
        )

    def _allocate(self, raw: list) -> tuple[np.ndarray, int]:
        """Map wires to label slots, reusing a slot once its wire is dead.

        A batch reads all its inputs before writing its outputs, so a wire whose
        last read is batch t may hand its slot to an output of batch t.
        """
        end = len(raw)
        last = np.full(self._n, -1, dtype=np.int64)
        for t, (_, a, b, _o, _i) in enumerate(raw):
            last[a] = t
            last[b] = t
        last[0] = end
        last[np.array(self._out, dtype=np.intp)] = end
        n_in = 1 + len(self._g) + len(self._e)
        slot = np.full(self._n, -1, dtype=np.intp)
        slot[:n_in] = np.arange(n_in)
        dying: dict[int, list[int]] = {}
        for w in range(self._n):
            dying.setdefault(int(last[w]), []).append(w)
        free = [int(slot[w]) for w in dying.get(-1, []) if w < n_in]
        n_slots = n_in
        for t, (_, _a, _b, out, _i) in enumerate(raw):
            free.extend(int(slot[w]) for w in dying.get(t, []) if slot[w] >= 0)
            for w in out:
                if free:
                    slot[w] = free.pop()
                else:
                    slot[w], n_slots = n_slots, n_slots + 1
            free.extend(int(slot[w]) for w in out if last[w] < 0)  # never read: dead at once
        return slot, n_slots


def _halves(ids: np.ndarray, width: int) -> np.ndarray:
    """High tweak words, shape (k, width, 1): 2·gate for the first width/2 rows, 2·gate+1 after."""
    hi = np.empty((ids.size, width, 1), dtype=U64)
    hi[:, : width // 2, 0] = (2 * ids)[:, None]
    hi[:, width // 2:, 0] = (2 * ids + 1)[:, None]
    return hi


def garble_chunk(
    circuit: Circuit,
    tccr: Tccr,
    delta: np.ndarray,
    garbler_zero: np.ndarray,
    evaluator_zero: np.ndarray,
    first_instance: int,
    tables: np.ndarray,
) -> np.ndarray:
    """Garble one chunk of n instances.

    ``delta`` (2,) uint64 with lsb 1; ``garbler_zero`` (n_garbler, n, 2) and
    ``evaluator_zero`` (n_evaluator, n, 2) input zero-labels; ``tables`` an output
    array (n_and, 2, n, 2) uint64 receiving T_G, T_E. Returns the output wires'
    zero-labels, (n_outputs, n, 2).
    """
    n = garbler_zero.shape[1]
    lab = np.empty((circuit.n_wires, n, 2), dtype=U64)
    lab[0] = delta
    lab[circuit.garbler_inputs] = garbler_zero
    lab[circuit.evaluator_inputs] = evaluator_zero
    inst = np.arange(first_instance, first_instance + n, dtype=U64)
    for bt in circuit.batches:
        if bt.kind == _XOR:
            lab[bt.out] = lab[bt.a] ^ lab[bt.b]
            continue
        a0, b0 = lab[bt.a], lab[bt.b]
        x = np.empty((bt.a.size, 4, n, 2), dtype=U64)
        x[:, 0], x[:, 2] = a0, b0
        np.bitwise_xor(a0, delta, out=x[:, 1])
        np.bitwise_xor(b0, delta, out=x[:, 3])
        h = tccr.hash(x, _halves(bt.gate_ids, 4), inst)
        h0, h1, h2, h3 = h[:, 0], h[:, 1], h[:, 2], h[:, 3]
        mask_a, mask_b = lsb_mask(a0), lsb_mask(b0)
        h1 ^= h0  # T_G = H(A0) ⊕ H(A1) ⊕ p_b·Δ
        h1 ^= mask_b & delta
        h3 ^= h2  # H(B0) ⊕ H(B1)
        w0 = mask_a & h1  # W^0 = H(A0) ⊕ p_a·T_G ⊕ H(B0) ⊕ p_b·(H(B0) ⊕ H(B1))
        w0 ^= h0
        w0 ^= h2
        w0 ^= mask_b & h3
        h3 ^= a0  # T_E = H(B0) ⊕ H(B1) ⊕ A0
        tables[bt.gate_ids, 0] = h1
        tables[bt.gate_ids, 1] = h3
        lab[bt.out] = w0
    return lab[circuit.outputs]


def evaluate_chunk(
    circuit: Circuit,
    tccr: Tccr,
    garbler_labels: np.ndarray,
    evaluator_labels: np.ndarray,
    first_instance: int,
    tables: np.ndarray,
) -> np.ndarray:
    """Evaluate one chunk: active input labels in, active output labels (n_outputs, n, 2) out."""
    n = garbler_labels.shape[1]
    lab = np.empty((circuit.n_wires, n, 2), dtype=U64)
    lab[0] = 0
    lab[circuit.garbler_inputs] = garbler_labels
    lab[circuit.evaluator_inputs] = evaluator_labels
    inst = np.arange(first_instance, first_instance + n, dtype=U64)
    for bt in circuit.batches:
        if bt.kind == _XOR:
            lab[bt.out] = lab[bt.a] ^ lab[bt.b]
            continue
        a, b = lab[bt.a], lab[bt.b]
        x = np.empty((bt.a.size, 2, n, 2), dtype=U64)
        x[:, 0], x[:, 1] = a, b
        h = tccr.hash(x, _halves(bt.gate_ids, 2), inst)
        tab = tables[bt.gate_ids]
        w = h[:, 0] ^ h[:, 1]
        w ^= lsb_mask(a) & tab[:, 0]
        w ^= lsb_mask(b) & (tab[:, 1] ^ a)
        lab[bt.out] = w
    return lab[circuit.outputs]


def permute_bits(labels: np.ndarray) -> np.ndarray:
    """lsb of each label: (…, 2) uint64 -> (…) bool."""
    return (labels[..., 0] & np.uint64(1)).astype(np.bool_)
