"""Disclosure control of federated queries: minimum group size decided under encryption, and
only released groups' aggregates opened at the requester (docs/query.md).

Inputs at the coordinator C, per opaque slot (one requester row), under the requester's
one-job BFV key: ``subjects`` (0/1: the row takes part in the answer — matched by the JOIN and
passing the EXISTS / NOT EXISTS tests) and one vector per released aggregate (COUNT(*) rows,
clipped SUMs). C knows the slot→group layout (group sizes, no identifiers) and never a key.

1. **Threshold.** C adds per-slot masks (uniform mod t, summing per group to a target) to
   ``subjects``: R decrypts and adds up per group d = c + target, where c is the group's
   distinct-subject count (integer mode: target = 2^l − k + r, r uniform in [0, 2^(l+40)),
   statistically hiding c; modular mode: a one-time pad mod t). The garbled circuit (C garbles,
   R evaluates, :mod:`.gc`) computes s = [c < k] — "suppress" — and R learns s only.
2. **Aggregates.** C adds per-slot masks whose per-group sum is a pad P (uniform mod t) to
   every aggregate vector: R decrypts and adds up a + P mod t, uniform whatever a is.
3. **Release keyed by the output label.** For every group and aggregate C sends
   P ⊕ KDF(L0, job, group, aggregate), with L0 the circuit's label of output "s = 0"
   (released). R holds L0 exactly when s = 0 and otherwise L1 = L0 ⊕ Δ, with Δ unknown to it:
   it removes the pads of released groups and nothing else. C learns no bit; R decrypts no
   small group's count and no aggregate of a suppressed group (a uniform residue).

Groups of a plan are bounded so that no value wraps modulo t: counts below
:data:`MAX_GROUP_ROWS` and sums clamped per subject to ±``MAX_VALUE_CENTS``.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import numpy as np

from pc_common.errors import InvalidInput
from pc_common.wire import MAX_VALUE_CENTS

from .backend import CipherVector, HeBackend
from .gc.masking import STAT_BITS, modular_mask
from .gc.primitives import U64
from .gc.spec import CircuitSpec
from .verdict import CriterionPlan, evaluator_input, garbler_targets

#: Rows (slots) of one group; with per-subject sums within ±MAX_VALUE_CENTS every group sum
#: stays far inside (−t/2, t/2) for t ≈ 2^60.
MAX_GROUP_ROWS = 1 << 24
#: A subject's matched provider rows counted by COUNT(*) are capped here (clipping, documented).
ROW_CAP = 1 << 16
PAD_BYTES = 8


@dataclass(frozen=True)
class ThresholdPlan:
    k: int                       # minimum group size
    plan: CriterionPlan          # the circuit's test [c < k]

    @property
    def spec(self) -> CircuitSpec:
        return CircuitSpec((self.plan.test,), reveal="verdict")


def threshold_plan(k: int, max_group: int, t: int) -> ThresholdPlan:
    """Both parties derive it from the signed minimum size, the public largest group and t."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_GROUP_ROWS:
        raise InvalidInput(f"minimum group size must be 1..{MAX_GROUP_ROWS}")
    if not 0 <= max_group <= MAX_GROUP_ROWS:
        raise InvalidInput(f"a group has more than {MAX_GROUP_ROWS} rows")
    bound = max(max_group, k)
    bits = bound.bit_length()
    if (1 << (bits + STAT_BITS + 1)) < t:
        mode = "integer"
    else:
        mode, bits = "modular", int(t).bit_length()
    return ThresholdPlan(k, CriterionPlan("min_group_size", "count_at_most", mode, bits, 0, bound))


def _group_sums(values: np.ndarray, layout: np.ndarray, n_groups: int, t: int) -> np.ndarray:
    """Σ per group mod t of residues < t (< 2^60), exact for up to 2^34 rows a group."""
    v = np.asarray(values, dtype=U64)
    lo, hi = v & np.uint64((1 << 30) - 1), v >> np.uint64(30)
    s_lo = np.zeros(n_groups, dtype=U64)
    s_hi = np.zeros(n_groups, dtype=U64)
    np.add.at(s_lo, layout, lo)
    np.add.at(s_hi, layout, hi)
    return np.array([(int(h) * (1 << 30) + int(low)) % t for h, low in zip(s_hi.tolist(), s_lo.tolist())],
                    dtype=U64)


def slot_masks(targets, layout: np.ndarray, n_groups: int, t: int) -> np.ndarray:
    """Per-slot masks, uniform mod t, summing (mod t) over each group's slots to its target."""
    layout = np.asarray(layout, dtype=np.int64)
    u, _ = modular_mask(t, 0, len(layout))
    sums = _group_sums(u, layout, n_groups, t)
    groups, first = np.unique(layout, return_index=True)
    if len(groups) != n_groups:
        raise InvalidInput("every group needs a row")
    tg = np.array([int(x) % t for x in targets], dtype=object)
    adj = [(int(tg[g]) - int(sums[g])) % t for g in groups.tolist()]
    for i, g in zip(first.tolist(), range(len(groups))):
        u[i] = (int(u[i]) + adj[g]) % t
    return u


def group_values(decrypted: np.ndarray, layout: np.ndarray, n_groups: int, t: int) -> np.ndarray:
    """R: Σ of its decrypted per-slot values per group, mod t."""
    v = np.asarray(decrypted)
    res = np.array([int(x) % t for x in v.tolist()], dtype=U64)
    return _group_sums(res, np.asarray(layout, dtype=np.int64), n_groups, t)


# ----- coordinator -------------------------------------------------------------------------------------
@dataclass
class CoordinatorMasks:
    masked_subjects: CipherVector
    masked_aggregates: list[CipherVector]
    garbler_input: object
    pads: np.ndarray               # (groups, aggregates) residues mod t, kept by C only


def mask(backend: HeBackend, tp: ThresholdPlan, subjects: CipherVector, aggregates: list[CipherVector],
         layout: np.ndarray, n_groups: int) -> CoordinatorMasks:
    """C: masks (plaintext additions only) for R, the circuit input and the pads."""
    if backend.supports_group_sum:
        raise InvalidInput("federated queries run under BFV")
    t = subjects.public.plaintext_modulus
    thr = np.full(n_groups, tp.k, dtype=np.int64)
    targets, g_in = garbler_targets(tp.plan, thr, t)
    masked_subjects = backend.add_plain(subjects, slot_masks(targets, layout, n_groups, t))
    pads = np.zeros((n_groups, len(aggregates)), dtype=object)
    masked = []
    for j, cv in enumerate(aggregates):
        p, _ = modular_mask(t, 0, n_groups)
        pads[:, j] = [int(x) for x in p.tolist()]
        masked.append(backend.add_plain(cv, slot_masks(pads[:, j].tolist(), layout, n_groups, t)))
    return CoordinatorMasks(masked_subjects, masked, g_in, pads)


def _keystream(label: np.ndarray, context: bytes, group: int, n: int) -> bytes:
    h = hashlib.shake_256()
    h.update(b"pc-query-release\x00" + context + group.to_bytes(8, "little"))
    h.update(np.ascontiguousarray(label, dtype=U64).tobytes())
    return h.digest(n * PAD_BYTES)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def release_message(garbler, pads: np.ndarray, context: bytes) -> bytes:
    """C, after garbling: per group the pads encrypted under the label of output "released"."""
    n_groups, n_agg = pads.shape
    labels = garbler.output_labels(False)         # output bit 0: [c < k] false → released
    out = bytearray()
    for g in range(n_groups):
        raw = b"".join(int(pads[g, j]).to_bytes(PAD_BYTES, "little") for j in range(n_agg))
        out += _xor(raw, _keystream(labels[g, 0], context, g, n_agg))
    return bytes(out)


# ----- requester ---------------------------------------------------------------------------------------
def requester_input(tp: ThresholdPlan, d_subjects: np.ndarray, t: int):
    return evaluator_input(tp.plan, d_subjects, t)


def open_released(evaluator, suppressed: np.ndarray, masked_groups: list[np.ndarray], message: bytes,
                  context: bytes, t: int) -> list[list[int] | None]:
    """R: per group None (suppressed) or its aggregates as signed integers (pads removed).

    A suppressed group's pads stay encrypted under a label R does not hold, so its masked
    aggregates are never turned into values."""
    n_groups, n_agg = len(suppressed), len(masked_groups)
    if len(message) != n_groups * n_agg * PAD_BYTES:
        raise InvalidInput("the release message does not match the job's groups")
    labels = evaluator.output_labels()
    out: list[list[int] | None] = []
    for g in range(n_groups):
        if suppressed[g]:
            out.append(None)
            continue
        chunk = message[g * n_agg * PAD_BYTES:(g + 1) * n_agg * PAD_BYTES]
        raw = _xor(chunk, _keystream(labels[g, 0], context, g, n_agg))
        values = []
        for j in range(n_agg):
            pad = int.from_bytes(raw[j * PAD_BYTES:(j + 1) * PAD_BYTES], "little")
            v = (int(masked_groups[j][g]) - pad) % t
            values.append(v - t if v > t // 2 else v)
        out.append(values)
    return out


def clamp_subject_sum(cents: int) -> int:
    """A subject's clipped sum, within ±MAX_VALUE_CENTS."""
    return max(-MAX_VALUE_CENTS, min(MAX_VALUE_CENTS, int(cents)))


def fresh_context() -> bytes:
    return secrets.token_bytes(16)


__all__ = ["MAX_GROUP_ROWS", "ROW_CAP", "CoordinatorMasks", "ThresholdPlan", "clamp_subject_sum", "group_values",
           "mask", "open_released", "release_message", "requester_input", "slot_masks", "threshold_plan"]
