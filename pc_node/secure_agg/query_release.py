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

**Differential privacy** (:mod:`.dp_noise`). Each provider sends, per aggregate vector, one
encrypted noise share per group (``ct:noise:<name>``, length = groups); C adds its own share to
its per-group targets and masks the providers' noise ciphertexts like one more slot of each
group (:class:`DpNoise`, the layout extended by one slot per group). R's per-group sums are
then a + N + pad with N = the sum of all shares, the mechanism's noise, known to nobody. The
threshold stream carries the same noise as the released distinct-subject count, shifted by
:func:`dp_shift` so the noisy count is never negative: the suppression is decided on the noisy
count (post-processing, no extra ε).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import numpy as np

from pc_common.errors import InvalidInput
from pc_common.wire import MAX_VALUE_CENTS

from . import dp_noise
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


def group_values(decrypted: np.ndarray, layout: np.ndarray, n_groups: int, t: int,
                 noise: np.ndarray | None = None) -> np.ndarray:
    """R: Σ of its decrypted per-slot values per group (and, DP, the group's masked noise), mod t."""
    if noise is not None:
        a, b = np.asarray(decrypted), np.asarray(noise)
        same = a.dtype == b.dtype and a.dtype.kind in "iu"          # never let numpy mix them into floats
        decrypted = np.concatenate([a, b] if same else [a.astype(object), b.astype(object)])
        layout = np.concatenate([np.asarray(layout, dtype=np.int64), np.arange(n_groups)])
    v = np.asarray(decrypted)
    if v.dtype.kind in "iu" and t < (1 << 63):      # residues in bulk (numpy's % is non-negative for t > 0)
        res = (v.astype(np.int64) % np.int64(t)).astype(U64) if v.dtype.kind == "i" else v % U64(t)
    else:
        res = np.array([int(x) % t for x in v.tolist()], dtype=U64)
    return _group_sums(res, np.asarray(layout, dtype=np.int64), n_groups, t)


# ----- differential privacy: both sides --------------------------------------------------------------
def dp_shift(epsilon: float, vectors: int, parties: int, n_categories: int = 0) -> int:
    """The largest |noise| of the distinct-subject count (every share clamped): added before the threshold."""
    return parties * dp_noise.share_bound(dp_noise.subject_scale(epsilon, vectors, n_categories))


def dp_subject_scale(epsilon: float, vectors: int, n_categories: int = 0) -> float:
    return dp_noise.subject_scale(epsilon, vectors, n_categories)


def dp_threshold_plan(k: int, max_group: int, t: int, shift: int) -> ThresholdPlan:
    """[c + N + shift < k + shift] with c + N + shift in [0, max_group + 2·shift]."""
    return threshold_plan(k + shift, max_group + 2 * shift, t)


@dataclass
class DpNoise:
    provider: list[CipherVector]   # per aggregate vector: the providers' encrypted shares, one per group
    coordinator: np.ndarray        # (aggregates, groups) C's own shares (int64)
    shift: int


def coordinator_shares(scales: list[float], parties: int, n_groups: int) -> np.ndarray:
    """C's noise shares: one per group for each aggregate vector, drawn from :func:`dp_noise.fresh_source`."""
    source = dp_noise.fresh_source()
    return np.array([source.share(s, parties, n_groups) for s in scales], dtype=np.int64).reshape(len(scales),
                                                                                                  n_groups)


# ----- coordinator -------------------------------------------------------------------------------------
@dataclass
class CoordinatorMasks:
    masked_subjects: CipherVector
    masked_aggregates: list[CipherVector]
    garbler_input: object
    pads: np.ndarray               # (groups, aggregates) residues mod t, kept by C only
    masked_noise: list[CipherVector] | None = None   # DP: threshold's, then each aggregate's


def mask(backend: HeBackend, tp: ThresholdPlan, subjects: CipherVector, aggregates: list[CipherVector],
         layout: np.ndarray, n_groups: int, noise: DpNoise | None = None) -> CoordinatorMasks:
    """C: masks (plaintext additions only) for R, the circuit input and the pads; with ``noise``
    also C's noise shares (in the targets) and the masks of the providers' noise ciphertexts."""
    if backend.supports_group_sum:
        raise InvalidInput("this masking is BFV's (Paillier queries: query_paillier.mask)")
    t = subjects.public.plaintext_modulus
    n = len(layout)
    ext = layout if noise is None else np.concatenate([np.asarray(layout, dtype=np.int64), np.arange(n_groups)])
    masked_noise: list[CipherVector] = []

    def add(cv: CipherVector, targets, j: int) -> CipherVector:
        if noise is None:
            return backend.add_plain(cv, slot_masks(targets, ext, n_groups, t))
        targets = [int(x) + int(c) for x, c in zip(targets, noise.coordinator[j].tolist())]
        m = slot_masks(targets, ext, n_groups, t)
        masked_noise.append(backend.add_plain(noise.provider[j], m[n:]))
        return backend.add_plain(cv, m[:n])

    thr = np.full(n_groups, tp.k, dtype=np.int64)
    targets, g_in = garbler_targets(tp.plan, thr, t)
    shift = noise.shift if noise is not None else 0
    masked_subjects = add(subjects, [int(x) + shift for x in targets], 0)
    pads = np.zeros((n_groups, len(aggregates)), dtype=object)
    masked = []
    for j, cv in enumerate(aggregates):
        p, _ = modular_mask(t, 0, n_groups)
        pads[:, j] = [int(x) for x in p.tolist()]
        masked.append(add(cv, pads[:, j].tolist(), j))
    return CoordinatorMasks(masked_subjects, masked, g_in, pads, masked_noise if noise is not None else None)


def pad_bytes(t: int) -> int:
    """Bytes of one pad: residues mod t (BFV's t < 2^64: 8; Paillier digits, t = 2^128: 16)."""
    return ((int(t) - 1).bit_length() + 7) // 8


def _keystream(label: np.ndarray, context: bytes, group: int, n: int) -> bytes:
    h = hashlib.shake_256()
    h.update(b"pc-query-release\x00" + context + group.to_bytes(8, "little"))
    h.update(np.ascontiguousarray(label, dtype=U64).tobytes())
    return h.digest(n)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def release_message(garbler, pads: np.ndarray, context: bytes, t: int) -> bytes:
    """C, after garbling: per group the pads (residues mod ``t``) encrypted under the label of
    output "released"."""
    n_groups, n_agg = pads.shape
    width = pad_bytes(t)
    labels = garbler.output_labels(False)         # output bit 0: [c < k] false → released
    out = bytearray()
    for g in range(n_groups):
        raw = b"".join(int(pads[g, j]).to_bytes(width, "little") for j in range(n_agg))
        out += _xor(raw, _keystream(labels[g, 0], context, g, n_agg * width))
    return bytes(out)


# ----- requester ---------------------------------------------------------------------------------------
def requester_input(tp: ThresholdPlan, d_subjects, t: int, bad: np.ndarray | None = None):
    """R's circuit input from its masked threshold values, and which groups it must not release.

    An integer-mode value outside [0, 2^(l+41)) — only a deviating coordinator makes one — is
    replaced by 0 and its group marked, instead of failing: a failure would tell the coordinator
    one bit of its choice (e.g. whether a group it made up counts a subject)."""
    bad = np.zeros(len(d_subjects), dtype=bool) if bad is None else np.array(bad, dtype=bool)
    if tp.plan.mode == "integer":
        top = 1 << (tp.plan.bits + STAT_BITS + 1)
        values = [int(x) for x in (d_subjects.tolist() if isinstance(d_subjects, np.ndarray) else d_subjects)]
        odd = np.array([not 0 <= x < top for x in values], dtype=bool)
        bad |= odd
        d_subjects = [0 if o else x for x, o in zip(values, odd.tolist())]
    return evaluator_input(tp.plan, d_subjects, t), bad


def open_released(evaluator, suppressed: np.ndarray, masked_groups: list[np.ndarray], message: bytes,
                  context: bytes, t: int, withheld: np.ndarray | None = None) -> list[list[int] | None]:
    """R: per group None (suppressed, or ``withheld``: its values did not decode, see
    :func:`requester_input`) or its aggregates as signed integers (pads removed).

    A suppressed group's pads stay encrypted under a label R does not hold, so its masked
    aggregates are never turned into values."""
    n_groups, n_agg = len(suppressed), len(masked_groups)
    width = pad_bytes(t)
    row = n_agg * width
    if len(message) != n_groups * row:
        raise InvalidInput("the release message does not match the job's groups")
    labels = evaluator.output_labels()
    out: list[list[int] | None] = []
    for g in range(n_groups):
        if suppressed[g] or (withheld is not None and withheld[g]):
            out.append(None)
            continue
        raw = _xor(message[g * row:(g + 1) * row], _keystream(labels[g, 0], context, g, row))
        values = []
        for j in range(n_agg):
            pad = int.from_bytes(raw[j * width:(j + 1) * width], "little")
            v = (int(masked_groups[j][g]) - pad) % t
            values.append(v - t if v > t // 2 else v)
        out.append(values)
    return out


def clamp_subject_sum(cents: int) -> int:
    """A subject's clipped sum, within ±MAX_VALUE_CENTS."""
    return max(-MAX_VALUE_CENTS, min(MAX_VALUE_CENTS, int(cents)))


def fresh_context() -> bytes:
    return secrets.token_bytes(16)


__all__ = ["MAX_GROUP_ROWS", "ROW_CAP", "CoordinatorMasks", "DpNoise", "ThresholdPlan",
           "clamp_subject_sum", "pad_bytes",
           "coordinator_shares", "dp_shift", "dp_subject_scale", "dp_threshold_plan", "group_values", "mask",
           "open_released", "release_message", "requester_input", "slot_masks", "threshold_plan"]
