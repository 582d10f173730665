"""Disclosure control of query-private jobs: the default mode's release over provider positions.

In ``query_private`` jobs (docs/query_private.md) the ciphertext vectors are indexed by the
provider's positions (its rows and dummy positions, in a random order), and the requester's
assignment says which positions form each group; the rest (unmatched rows, unused dummies)
belong to no group. The coordinator masks exactly as in :func:`.query_release.mask` over the
assigned positions — per group the threshold target and the aggregates' pads — and gives every
unassigned position a fresh uniform mask, so the requester decrypts one-time-padded residues
there and nothing else. The garbled threshold and the label-keyed pads are
:mod:`.query_release`'s, unchanged.
"""
from __future__ import annotations

import numpy as np

from pc_common.errors import InvalidInput

from . import query_release as qr
from .backend import CipherVector, HeBackend
from .gc.masking import modular_mask
from .verdict import garbler_targets

__all__ = ["check_assignment", "mask_positions", "requester_groups", "unsupported"]


def unsupported(plan) -> str | None:
    """Why private mode cannot run a query plan (``pc_rules.query.QueryPlan``), in one line, or None:
    it groups by requester columns only, and needs a positive provider set (a JOIN or EXISTS)."""
    if len(plan.providers()) > 1:
        return "--private supports datasets of one provider agency per query; run it without --private"
    if plan.provider_group or any(a.func == "group" and a.alias != plan.source.alias for a in plan.select):
        return "--private supports GROUP BY requester columns only"
    if not any(s.kind in ("join", "exists") for s in plan.providers_sources()):
        return "--private needs a JOIN or EXISTS on the provider's dataset (NOT EXISTS alone is not supported)"
    return None


def check_assignment(layout: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """C: a requester's assignment has one entry per position, −1 or a group number, and
    exactly each group's (public) size of positions. Returns it as int64."""
    lay = np.asarray(layout, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if lay.shape != (total,) or int(lay.min(initial=0)) < -1 or int(lay.max(initial=-1)) >= len(sizes):
        raise InvalidInput("the requester's assignment does not match the provider's positions")
    if not np.array_equal(np.bincount(lay[lay >= 0], minlength=len(sizes)), sizes):
        raise InvalidInput("the requester's assignment does not give every group its size")
    return lay


def _masks(targets, lay: np.ndarray, n_groups: int, t: int) -> np.ndarray:
    u, _ = modular_mask(t, 0, len(lay))
    assigned = lay >= 0
    u[assigned] = qr.slot_masks(targets, lay[assigned], n_groups, t)
    return u


def mask_positions(backend: HeBackend, tp: qr.ThresholdPlan, subjects: CipherVector,
                   aggregates: list[CipherVector], layout: np.ndarray, n_groups: int) -> qr.CoordinatorMasks:
    """C: as :func:`.query_release.mask`, over the assigned positions; uniform elsewhere."""
    if backend.supports_group_sum:
        raise InvalidInput("query-private jobs run under BFV")
    t = subjects.public.plaintext_modulus
    lay = np.asarray(layout, dtype=np.int64)
    targets, g_in = garbler_targets(tp.plan, np.full(n_groups, tp.k, dtype=np.int64), t)
    masked_subjects = backend.add_plain(subjects, _masks(targets, lay, n_groups, t))
    pads = np.zeros((n_groups, len(aggregates)), dtype=object)
    masked = []
    for j, cv in enumerate(aggregates):
        p, _ = modular_mask(t, 0, n_groups)
        pads[:, j] = [int(x) for x in p.tolist()]
        masked.append(backend.add_plain(cv, _masks(pads[:, j].tolist(), lay, n_groups, t)))
    return qr.CoordinatorMasks(masked_subjects, masked, g_in, pads)


def requester_groups(decrypted: np.ndarray, layout: np.ndarray, n_groups: int, t: int) -> np.ndarray:
    """R: per group the sum of its assigned positions' decrypted residues, mod t."""
    lay = np.asarray(layout, dtype=np.int64)
    dec = np.asarray(decrypted)[: len(lay)]
    assigned = lay >= 0
    return qr.group_values(dec[assigned], lay[assigned], n_groups, t)
