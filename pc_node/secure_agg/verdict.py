"""Masking plan of eligibility verification: from per-criterion HE sums to GC comparison inputs.

Both ends derive the same plan from the signed rule, the job's backend and its plaintext
modulus t (:func:`plan`); nothing of it is taken from the other party. Per criterion:

* value x ≥ 0 per group: counts as they are (each provider clamps a subject's count to
  :data:`COUNT_CAP`), money sums shifted by the public offset B = MAX_GROUP · agencies ·
  MAX_VALUE_CENTS, so x = S + B ∈ [0, 2B]; width l = bits of the largest x;
* threshold T′ = T + B clamped to [0, 2B + 1] (T below −B: never passes; above B: always);
* mode ``integer`` (statistical masking, κ = 40) where x + 2^(l+41) fits the plaintext space
  — every criterion under Paillier, counts under BFV — else ``modular`` (one-time pad mod t).

The coordinator C (garbler) only adds plaintexts, never multiplies (BFV: no ciphertext
multiplied by C's secret reaches the key holder; Paillier outputs are re-randomised):

* BFV: per-slot masks uniform mod t, except that within each group they sum to the group
  target — 2^l − T′ + r + B (integer, r uniform in [0, 2^(l+40))) or r + B (modular, r
  uniform mod t). R decrypts one-time-padded per-slot values and adds them up per group:
  d = x + target, which is the library's masked value (:mod:`.gc.masking`).
* Paillier: the group sums (``group_sum``, public products) plus B + 2^l − T′ + r,
  re-randomised by a fresh rⁿ; R decrypts d = z + r directly.

The key holder's side (:func:`group_values`, :func:`evaluator_input`) is here too: it uses
only the decrypted values it is given.
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pc_common.errors import InvalidInput
from pc_common.wire import MAX_GROUP, MAX_VALUE_CENTS

from .backend import CipherVector, HeBackend
from .gc.masking import (
    STAT_BITS,
    IntegerGarblerInput,
    ModularGarblerInput,
    integer_garbler_input,
    integer_inputs,
    modular_garbler_input,
    modular_inputs,
    modular_mask,
)
from .gc.primitives import U64
from .gc.spec import CircuitSpec, Test

#: A subject's record count per criterion and provider is clamped to this (exact for
#: none_exists / exists, and for count_at_most with max < COUNT_CAP).
COUNT_CAP = 255


@dataclass(frozen=True)
class CriterionPlan:
    name: str
    kind: str               # none_exists | exists | count_at_most | sum_below
    mode: str               # integer | modular
    bits: int               # circuit width: integer — every x < 2^l; modular — bits of t
    offset: int             # B, added to every group value and to the threshold
    bound: int              # largest x (after the offset)

    @property
    def test(self) -> Test:
        return Test(bits=self.bits, mode=self.mode, invert=self.kind == "exists")


def check_criterion(c) -> None:
    """Refuse a count test that the per-subject cap would make inexact."""
    if c.type == "count_at_most" and c.max >= COUNT_CAP:
        raise InvalidInput(f"criterion '{c.name}': count_at_most needs max below {COUNT_CAP}"
                           " (a subject's records are counted up to that cap)")


def plan(criteria: Sequence, backend_name: str, plaintext_modulus: int) -> list[CriterionPlan]:
    """The plan of every criterion, in rule order; InvalidInput where a criterion cannot fit."""
    t = int(plaintext_modulus)
    out = []
    for c in criteria:
        agencies = max(1, len(c.agencies()))
        if c.type == "sum_below":
            offset = MAX_GROUP * agencies * MAX_VALUE_CENTS
            bound = 2 * offset
        else:
            check_criterion(c)
            offset, bound = 0, MAX_GROUP * agencies * COUNT_CAP
        bits = bound.bit_length()
        if backend_name == "paillier" or (1 << (bits + STAT_BITS + 1)) < t:
            mode = "integer"
        elif bound + 1 < t:
            mode, bits = "modular", t.bit_length()     # the circuit compares residues mod t
        else:  # pragma: no cover - t ≈ 2^60 holds any bounded criterion
            raise InvalidInput(f"criterion '{c.name}' does not fit the plaintext space")
        out.append(CriterionPlan(c.name, c.type, mode, bits, offset, bound))
    return out


def circuit_spec(plans: Sequence[CriterionPlan], reveal: str) -> CircuitSpec:
    return CircuitSpec(tuple(p.test for p in plans), reveal=reveal)


def base_threshold(criterion, size: int) -> int:
    """pass iff x < T: none_exists / exists test [count < 1] (exists inverted)."""
    if criterion.type in ("none_exists", "exists"):
        return 1
    if criterion.type == "count_at_most":
        return criterion.max + 1
    return criterion.threshold_cents(int(size))


def thresholds(criterion, p: CriterionPlan, sizes: np.ndarray) -> np.ndarray:
    """T′ per group: T + B clamped to [0, bound + 1] (the verdict is unchanged by the clamp)."""
    by_size = {int(s): min(max(base_threshold(criterion, int(s)) + p.offset, 0), p.bound + 1)
               for s in np.unique(sizes)}
    return np.array([by_size[int(s)] for s in sizes], dtype=np.int64)


# ----- coordinator (garbler) side --------------------------------------------------------------
def _integer_masks(bits: int, count: int) -> list[int]:
    width = bits + STAT_BITS
    return [secrets.randbits(width) for _ in range(count)]


def garbler_targets(p: CriterionPlan, thr: np.ndarray, t: int | None):
    """(target to add to each group's value, C's circuit input). ``t``: BFV's modulus for
    modular mode (targets are then residues mod t)."""
    n = len(thr)
    if p.mode == "integer":
        rs = _integer_masks(p.bits, n)
        top = 1 << p.bits
        targets = [p.offset + top - int(T) + r for T, r in zip(thr.tolist(), rs)]
        return targets, integer_garbler_input(p.bits, rs)
    if t is None:
        raise InvalidInput("modular masking needs the plaintext modulus")
    r, _ = modular_mask(t, 0, n)
    a = np.empty(n, dtype=U64)
    b = np.empty(n, dtype=U64)
    for T in np.unique(thr):
        idx = np.nonzero(thr == T)[0]
        gi = modular_garbler_input(t, int(T), r[idx])
        a[idx], b[idx] = gi.a, gi.b
    targets = [(int(x) + p.offset) % t for x in r.tolist()]
    return targets, ModularGarblerInput(a, b, a > b)


def slot_masks(targets: Sequence[int], layout: np.ndarray, t: int) -> np.ndarray:
    """Per-slot masks, uniform mod t, whose sum over each group's slots is its target mod t."""
    layout = np.asarray(layout, dtype=np.int64)
    n_groups = len(targets)
    u, _ = modular_mask(t, 0, len(layout))
    sums = np.zeros(n_groups, dtype=U64)
    np.add.at(sums, layout, u)          # at most MAX_GROUP values < t: 16·t < 2^64
    sums %= np.uint64(t)
    groups, first = np.unique(layout, return_index=True)
    if len(groups) != n_groups:
        raise InvalidInput("every group needs a member")
    tg = np.array([int(x) % t for x in targets], dtype=U64)
    adj = (tg + np.uint64(t) - sums) % np.uint64(t)
    u[first] = (u[first] + adj[groups]) % np.uint64(t)
    return u


def mask_bfv(backend: HeBackend, per_slot: CipherVector, p: CriterionPlan, thr: np.ndarray,
             layout: np.ndarray):
    """Masked per-slot ciphertext for R (plaintext addition only) and C's circuit input."""
    t = per_slot.public.plaintext_modulus
    targets, g_in = garbler_targets(p, thr, t)
    return backend.add_plain(per_slot, slot_masks(targets, layout, t)), g_in


def mask_paillier(backend: HeBackend, per_slot: CipherVector, p: CriterionPlan, thr: np.ndarray,
                  layout: np.ndarray, n_groups: int):
    """Enc(group sum + target), re-randomised (fresh rⁿ), and C's circuit input."""
    targets, g_in = garbler_targets(p, thr, None)
    grouped = backend.group_sum(per_slot, layout, n_groups)
    return backend.rerandomize(backend.add_plain(grouped, targets)), g_in


# ----- key holder (evaluator) side ----------------------------------------------------------------
def group_values(decrypted: np.ndarray, slot_group: np.ndarray, n_groups: int, t: int) -> np.ndarray:
    """Σ of decrypted per-slot values per group, mod t (BFV)."""
    v = np.asarray(decrypted)
    if v.dtype == object:
        res = np.array([int(x) % t for x in v], dtype=U64)
    else:
        v = v.astype(np.int64)
        res = np.where(v < 0, v + np.int64(t), v).astype(U64)
    sums = np.zeros(n_groups, dtype=U64)
    np.add.at(sums, slot_group, res)
    return sums % np.uint64(t)


def evaluator_input(p: CriterionPlan, d, t: int):
    """R's circuit input from its masked group values d (refused if out of range)."""
    if p.mode == "integer":
        return integer_inputs([int(x) for x in (d.tolist() if isinstance(d, np.ndarray) else d)], p.bits)
    return modular_inputs(np.asarray([int(x) % t for x in d], dtype=U64) if not isinstance(d, np.ndarray)
                          else d.astype(U64), t)


__all__ = ["COUNT_CAP", "CriterionPlan", "IntegerGarblerInput", "ModularGarblerInput", "check_criterion", "circuit_spec",
           "evaluator_input", "garbler_targets", "group_values", "mask_bfv", "mask_paillier", "plan",
           "slot_masks", "thresholds"]
