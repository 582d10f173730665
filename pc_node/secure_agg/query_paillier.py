"""Federated queries whose answer is a product of two agencies' data, under Paillier (docs/query.md,
"Several provider agencies").

BFV would need a ciphertext product (a further agency's 0/1 test × the main provider's answers),
and a BFV product's decryption noise depends on its factors, which the key holder — the
requester's node — could read. Paillier needs no product of ciphertexts: the further agency's
factor is its own plaintext, and every result is multiplied by a fresh encryption of zero, so a
ciphertext carries nothing of how it was made (re-randomisation is perfect up to the key's
assumption).

* **Packs.** A slot's values (the threshold's copy of ``subjects``, then the plan's vectors) are
  digits of one plaintext, ``Σ v_j · 2^(128·j)``, up to :func:`digits_per_pack` per ciphertext. Signed
  digits add up without interfering as long as every digit stays within ±2^127: per-slot values
  are below 2^35, group totals below 2^VALUE_BITS, masks below 2^(VALUE_BITS+40).
* **A further agency** never holds the main provider's ciphertexts as they are: the coordinator
  adds a statistical mask R per entry and digit (:func:`mask_for_selection`); the agency answers
  ``Enc(e·(v + R))·Enc(0)`` and ``Enc(e)``, e ∈ {0, 1} its own test (:func:`select`); the
  coordinator removes ``e·R`` with ``Enc(e)^(−R)`` (:func:`unmask_selection`). So even an agency
  that hands all it holds to the requester gives away v + R, statistically hiding v (κ = 40 over
  a whole job). One that *answers falsely* with the requester (e not 0/1) is not stopped — no
  proof of a correct selection is built — which is why each provider's grant names the agencies
  it trusts that far (``query_with``, checked at admission).
* **The coordinator** sums per group (a product of ciphertexts, no key), adds the providers'
  encrypted noise shares (DP), adds per digit the threshold target or the aggregate's pad (and
  its own noise shares) and re-randomises: the requester decrypts one integer per group and pack.
  Pads are statistical (uniform below 2^(VALUE_BITS+40), κ = 40) where BFV's are one-time pads
  mod t; :data:`DIGIT_MOD` stands for t in :mod:`.query_release`'s release and threshold plans.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pc_common.errors import InvalidInput

from .backend import CipherVector, HeBackend
from .gc.masking import STAT_BITS
from .paillier import PaillierCipherVector
from .verdict import garbler_targets

DIGIT_BITS = 128
#: What the threshold and release plans of :mod:`.query_release` take as the modulus t.
DIGIT_MOD = 1 << DIGIT_BITS
#: |a slot's value| of any digit: clipped sums ±10^10 < 2^34, matched rows ≤ 2^16, 0/1 indicators.
SLOT_BITS = 35
#: A selection mask per digit: κ = 40 per value plus 24 bits for up to 2^24 values a job exposes.
SELECT_MASK_BITS = SLOT_BITS + STAT_BITS + 24
#: |a group's total| of any digit, DP noise included: 2^24 rows × 2^34 stays below 2^58; 2^76
#: leaves room for the noise shares (each below 2^50) and the DP shift.
VALUE_BITS = 76
#: The digit that carries the threshold's copy of the distinct-subject indicator.
THRESHOLD = "threshold"
#: A further agency's stream of its encrypted 0/1 tests (``ct:kept``).
KEPT = "kept"
_HALF = 1 << (DIGIT_BITS - 1)


def pack_stream(k: int) -> str:
    """The name of pack ``k``'s streams (``ct:pack0``, ``masked:pack0``, ``ct:noise:pack0``)."""
    return f"pack{k}"


def digits_per_pack(public) -> int:
    """Digits one plaintext holds below the key's plaintext bound (7 for a 2048-bit key)."""
    return max(1, (public.plaintext_bound.bit_length() - 1) // DIGIT_BITS)


def pack_names(vectors: Sequence[str], per_pack: int) -> list[tuple[str, ...]]:
    """The digits of each pack, in order: the threshold copy first, then the plan's vectors."""
    names = (THRESHOLD,) + tuple(vectors)
    return [names[i:i + per_pack] for i in range(0, len(names), per_pack)]


def pack(columns: Sequence[Sequence[int]]) -> list[int]:
    """Per entry Σ_j columns[j][i] · 2^(128·j), for signed per-slot values below 2^127."""
    if not columns:
        raise InvalidInput("nothing to pack")
    out = [0] * len(columns[0])
    for j, col in enumerate(columns):
        vals = col.tolist() if isinstance(col, np.ndarray) else list(col)
        if len(vals) != len(out):
            raise InvalidInput("packed columns differ in length")
        if vals and (max(vals) >= _HALF or min(vals) < -_HALF):
            raise InvalidInput("a packed value does not fit its digit")
        shift = DIGIT_BITS * j
        out = [o + (int(v) << shift) for o, v in zip(out, vals)]
    return out


def unpack(values: Sequence[int], digits: int) -> list[list[int]]:
    """The balanced digits of decrypted packs: ``digits`` columns of signed integers."""
    cols: list[list[int]] = [[] for _ in range(digits)]
    mask = DIGIT_MOD - 1
    for x in values:
        x = int(x)
        for j in range(digits):
            d = x & mask
            if d >= _HALF:
                d -= DIGIT_MOD
            cols[j].append(d)
            x = (x - d) >> DIGIT_BITS
        if x:
            raise InvalidInput("a decrypted pack has more digits than the job's")
    return cols


# ----- main provider ------------------------------------------------------------------------------------
def encrypt_packs(backend: HeBackend, pub, names: list[tuple[str, ...]], columns: dict[str, np.ndarray]
                  ) -> list[CipherVector]:
    """The main provider's packs of per-vector columns: its per-slot answers, or its DP noise
    shares per group. The threshold digit repeats ``subjects`` (its value, or its noise share)."""
    return [backend.encrypt(pub, pack([columns["subjects" if d == THRESHOLD else d] for d in digits]))
            for digits in names]


# ----- a further provider agency (its selection between the coordinator's masks) ----------------------
def mask_for_selection(backend: HeBackend, names: list[tuple[str, ...]], packs: Sequence[CipherVector]
                       ) -> tuple[list[CipherVector], list[list[int]]]:
    """C, before a further agency: every entry plus a fresh mask, uniform below 2^SELECT_MASK_BITS in
    each digit. Returns the masked packs and the masks (kept by C for :func:`unmask_selection`)."""
    if len(names) != len(packs):
        raise InvalidInput("the answer does not match the job's packs")
    masked, masks = [], []
    for digits, cv in zip(names, packs):
        cols = [[secrets.randbits(SELECT_MASK_BITS) for _ in range(cv.length)] for _ in digits]
        r = pack(cols)
        masked.append(backend.add_plain(cv, r))
        masks.append(r)
    return masked, masks


def select(backend: HeBackend, packs: Sequence[CipherVector], keep: np.ndarray, pub
           ) -> tuple[list[CipherVector], CipherVector]:
    """A further agency: ``c^e · Enc(0)`` per entry — the (masked) pack where ``keep`` is 1, an
    encryption of zero where it is 0 — and ``Enc(e)`` per slot, fresh, for the coordinator. With
    a provider GROUP BY the packs hold categories × slots entries (category-major) and ``keep``
    is tiled over the categories."""
    keep = np.asarray(keep, dtype=np.int64)
    if keep.size and (keep.min() < 0 or keep.max() > 1):
        raise InvalidInput("a selection is 0 or 1 per slot")
    reps = packs[0].length // len(keep) if packs and len(keep) else 0
    if not 1 <= reps <= 64 or any(cv.length != reps * len(keep) for cv in packs):
        raise InvalidInput("the main provider's answer does not match the job's slots")
    tiled = np.tile(keep, reps)
    out = [backend.rerandomize(backend.mul_plain(cv, tiled)) for cv in packs]
    return out, backend.encrypt(pub, keep)


def unmask_selection(backend: HeBackend, selected: Sequence[CipherVector], kept: CipherVector,
                     masks: list[list[int]]) -> list[CipherVector]:
    """C: Enc(e·(v + R)) · Enc(e)^(−R) = Enc(e·v) per entry (``kept`` per slot, tiled over categories)."""
    if not kept.length or len(selected) != len(masks) or not selected:
        raise InvalidInput("the further agency's answer does not match the job's slots")
    reps, rest = divmod(selected[0].length, kept.length)
    if rest or not 1 <= reps <= 64 or any(cv.length != len(r) or cv.length != selected[0].length
                                          for cv, r in zip(selected, masks)):
        raise InvalidInput("the further agency's answer does not match the job's slots")
    tiled = PaillierCipherVector(kept.public, list(kept.cts) * reps)
    return [backend.add(cv, backend.mul_plain(tiled, [-x for x in r])) for cv, r in zip(selected, masks)]


# ----- coordinator ----------------------------------------------------------------------------------------
@dataclass
class PackedMasks:
    masked: list[CipherVector]     # per pack, one ciphertext per group, for R
    garbler_input: object
    pads: np.ndarray               # (groups, aggregates) C's pads, kept by C only


def mask(backend: HeBackend, tp, names: list[tuple[str, ...]], vectors: Sequence[str], packs: Sequence[CipherVector],
         layout: np.ndarray, n_groups: int, noise: list[CipherVector] | None = None,
         own_shares: np.ndarray | None = None, shift: int = 0) -> PackedMasks:
    """C: per group and pack Enc(Σ slots + noise + targets), re-randomised; the threshold digit's
    target is the circuit's (plus ``shift`` under DP), every aggregate's a fresh statistical pad.
    ``own_shares``: C's DP noise shares, (vectors, groups), added to the targets."""
    thr = np.full(n_groups, tp.k, dtype=np.int64)
    targets, g_in = garbler_targets(tp.plan, thr, None)
    pads = np.array([[secrets.randbits(VALUE_BITS + STAT_BITS) for _ in vectors] for _ in range(n_groups)],
                    dtype=object).reshape(n_groups, len(vectors))
    per_digit = {THRESHOLD: [int(x) + shift for x in targets]}
    for j, name in enumerate(vectors):
        per_digit[name] = [int(p) for p in pads[:, j]]
    if own_shares is not None:
        per_digit[THRESHOLD] = [x + int(s) for x, s in zip(per_digit[THRESHOLD], own_shares[0])]
        for j, name in enumerate(vectors):
            per_digit[name] = [x + int(s) for x, s in zip(per_digit[name], own_shares[j])]
    masked = []
    for k, digits in enumerate(names):
        grouped = backend.group_sum(packs[k], layout, n_groups)
        if noise is not None:
            if noise[k].length != n_groups:
                raise InvalidInput("the provider's noise shares do not match the job's groups")
            grouped = backend.add(grouped, noise[k])
        masked.append(backend.rerandomize(backend.add_plain(grouped, pack([per_digit[d] for d in digits]))))
    return PackedMasks(masked, g_in, pads)


# ----- requester -----------------------------------------------------------------------------------------
def open_packs(backend: HeBackend, secret, names: list[tuple[str, ...]], packs: Sequence[CipherVector],
               n_groups: int) -> tuple[dict[str, list[int]], np.ndarray]:
    """R: per digit name, its masked group values (residues mod :data:`DIGIT_MOD`), and per group
    whether its packs decoded as the protocol makes them. A group that did not (only a deviating
    coordinator makes one) must look no different from outside: the caller goes on as usual and
    releases nothing of it — failing would tell the coordinator one bit of its choice."""
    out: dict[str, list[int]] = {}
    bad = np.zeros(n_groups, dtype=bool)
    for digits, cv in zip(names, packs):
        if cv.length != n_groups:
            raise InvalidInput("masked values do not match the job's groups")
        top = 1 << (DIGIT_BITS * len(digits) - 1)
        values = [int(x) for x in backend.decrypt(secret, cv).tolist()]
        odd = np.array([not -top <= x < top for x in values], dtype=bool)
        bad |= odd
        cols = unpack([0 if o else x for x, o in zip(values, odd.tolist())], len(digits))
        for d, col in zip(digits, cols):
            out[d] = [v % DIGIT_MOD for v in col]
    return out, bad


__all__ = ["DIGIT_MOD", "KEPT", "SLOT_BITS", "THRESHOLD", "VALUE_BITS", "PackedMasks", "digits_per_pack", "mask",
           "encrypt_packs", "mask_for_selection", "open_packs", "pack", "pack_names", "pack_stream",
           "select", "unmask_selection", "unpack"]
