"""What the comparison circuit computes: criteria, reveal mode, and the circuit itself.

Per instance and criterion k (width l = ``bits``), from the inputs of
:mod:`.masking`:

* integer: pass = ¬(D0 ⊕ R0 ⊕ [α < β]) = [x < T];
* modular: pass = (A ∧ B) ⊕ (w ∧ (A ⊕ B)) with A = ¬[d < a], B = [d < b];
* ``invert`` flips pass (e.g. "exists": x ≥ 1 = ¬[x < 1]).

Outputs: ``reveal="verdict"`` — one bit, the AND of all pass bits (a balanced
tree, K − 1 ANDs); ``reveal="reasons"`` — the K pass bits. A comparison [a < b] of
l-bit numbers is the LSB-first chain lt' = lt ⊕ ((a_i ⊕ b_i) ∧ (b_i ⊕ lt)): l ANDs.
AND gates per instance: Σ_integer l + Σ_modular (2l + 2) + (K − 1 in verdict mode).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from pc_common.errors import InvalidInput

from .garble import Circuit, CircuitBuilder
from .masking import MAX_BITS
from .primitives import kdf


@dataclass(frozen=True)
class Test:
    """One criterion: width ``bits`` (l), ``mode`` "integer" | "modular", public ``invert``."""

    __test__ = False  # not a pytest test class

    bits: int
    mode: str = "integer"
    invert: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise InvalidInput(f"comparison width must be 1..{MAX_BITS} bits")
        if self.mode not in ("integer", "modular"):
            raise InvalidInput("comparison mode must be 'integer' or 'modular'")
        if not isinstance(self.invert, bool):
            raise InvalidInput("invert must be a bool")

    @property
    def garbler_bits(self) -> int:
        return self.bits + 1 if self.mode == "integer" else 2 * self.bits + 1

    @property
    def evaluator_bits(self) -> int:
        return self.bits + 1 if self.mode == "integer" else self.bits


@dataclass(frozen=True)
class CircuitSpec:
    criteria: tuple[Test, ...]
    reveal: str = "verdict"

    def __post_init__(self) -> None:
        crit = tuple(self.criteria)
        object.__setattr__(self, "criteria", crit)
        if not crit or not all(isinstance(c, Test) for c in crit):
            raise InvalidInput("a comparison needs at least one criterion")
        if len(crit) > 255:
            raise InvalidInput("too many criteria")
        if self.reveal not in ("verdict", "reasons"):
            raise InvalidInput("reveal must be 'verdict' or 'reasons'")

    @functools.cached_property
    def digest(self) -> bytes:
        enc = self.reveal.encode() + b"".join(
            bytes([c.bits, c.mode == "modular", c.invert]) for c in self.criteria
        )
        return kdf(b"pc-gc/spec/v1", enc)

    @property
    def circuit(self) -> Circuit:
        return build_circuit(self)


def _less_than(cb: CircuitBuilder, a: list[int], b: list[int]) -> int:
    """[a < b] for LSB-first bit wires: lt' = lt ⊕ ((a_i ⊕ b_i) ∧ (b_i ⊕ lt)), l ANDs."""
    lt = cb.and_(cb.xor(a[0], b[0]), b[0])
    for ai, bi in zip(a[1:], b[1:]):
        lt = cb.xor(lt, cb.and_(cb.xor(ai, bi), cb.xor(bi, lt)))
    return lt


@functools.lru_cache(maxsize=64)
def build_circuit(spec: CircuitSpec) -> Circuit:
    """The comparison circuit. Input order per criterion (LSB first):
    integer — C: β (l), R0; R: α (l), D0. modular — C: a (l), b (l), w; R: d (l)."""
    cb = CircuitBuilder()
    g = [[cb.garbler_input() for _ in range(c.garbler_bits)] for c in spec.criteria]
    e = [[cb.evaluator_input() for _ in range(c.evaluator_bits)] for c in spec.criteria]
    passes = []
    for c, gw, ew in zip(spec.criteria, g, e):
        l = c.bits
        if c.mode == "integer":
            z_l = cb.xor(cb.xor(ew[l], gw[l]), _less_than(cb, ew[:l], gw[:l]))
            p = z_l if c.invert else cb.not_(z_l)  # pass = ¬z_l = [x < T]
        else:
            a_le_d = cb.not_(_less_than(cb, ew, gw[:l]))
            d_lt_b = _less_than(cb, ew, gw[l:2 * l])
            both = cb.and_(a_le_d, d_lt_b)
            p = cb.xor(both, cb.and_(gw[2 * l], cb.xor(a_le_d, d_lt_b)))
            if c.invert:
                p = cb.not_(p)
        passes.append(p)
    if spec.reveal == "reasons":
        for p in passes:
            cb.output(p)
    else:
        while len(passes) > 1:  # balanced AND tree
            passes = [cb.and_(passes[i], passes[i + 1]) for i in range(0, len(passes) - 1, 2)] + (
                [passes[-1]] if len(passes) % 2 else []
            )
        cb.output(passes[0])
    return cb.build()
