"""Intersection-sum in the style of Private Join and Compute, per group (docs/query_private.md).

Requester R (identifiers in groups, the one-job BFV key), provider P (identifiers with values),
coordinator C (no key). ECDH on X25519 with commutative re-encryption, as in ``protocol``:

1. R: ``H(x)^a`` in per-group batches (groups in opaque order, random order inside a batch).
2. P: raises every batch to ``b`` and re-shuffles it inside the batch (→ R, sealed), so R can
   count a group's matches but not tell which of its identifiers matched; P's own table
   ``H(y)^b`` at **positions**: its m rows and ``n_dummies`` dummy positions in one random
   permutation; the value vectors (encrypted by the caller, → C) carry 0 at dummy positions.
3. R: raises P's points to ``a`` and matches ``H(y)^(ab)`` against each batch. It assigns every
   group exactly as many positions as it has rows: its matches, padded with distinct unused
   dummy positions, so the assignment C receives has the public group sizes and nothing else.

No transport, no HE: the caller encrypts, seals and relays. Keys are injectable for tests.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pc_common.errors import InvalidInput

from .curve import EcBackend, resolve_backend
from .encoding import POINT_LEN
from .randomness import Rng, random_permutation

__all__ = ["UNASSIGNED", "ProviderTable", "domain_for", "double_blind", "assign_positions", "blind_groups",
           "provider_table"]

UNASSIGNED = -1


def domain_for(job_id: str) -> bytes:
    """Hash-to-curve domain of one job: points of different jobs never relate."""
    return b"pc.query_private.v1|job=" + job_id.encode()


def blind_groups(ids: Sequence[str], group_no: np.ndarray, n_groups: int, key: bytes, domain: bytes,
                 backend: EcBackend | str | None = None, rng: Rng | None = None) -> tuple[np.ndarray, np.ndarray]:
    """R: ``(points, sizes)`` — ``H(x)^a`` ordered by group number, random inside each group."""
    ec = resolve_backend(backend)
    group_no = np.asarray(group_no, dtype=np.int64)
    perm = random_permutation(len(ids), rng)
    order = perm[np.argsort(group_no[perm], kind="stable")]
    sizes = np.bincount(group_no, minlength=n_groups).astype(np.int64)
    pts = ec.hash_to_points([ids[i] for i in order.tolist()], domain)
    return ec.scalarmult_batch(key, pts), sizes


def _check_sizes(points: np.ndarray, sizes: np.ndarray) -> None:
    if points.ndim != 2 or points.shape[1] != POINT_LEN or int(np.asarray(sizes).sum()) != len(points) \
            or (np.asarray(sizes) < 1).any():
        raise InvalidInput("the group batches do not match their sizes")


def double_blind(points: np.ndarray, sizes: np.ndarray, key: bytes, backend: EcBackend | str | None = None,
                 rng: Rng | None = None) -> np.ndarray:
    """P: every batch raised to ``b`` and shuffled inside the batch (batches keep their order)."""
    ec = resolve_backend(backend)
    _check_sizes(points, sizes)
    out = ec.scalarmult_batch(key, points)
    # Sorting by (batch, random key) reorders inside batches only.
    batch = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((random_permutation(len(points), rng), batch))
    return np.ascontiguousarray(out[order])


class ProviderTable:
    """P's side after :func:`provider_table`: what goes sealed to R and what gets encrypted."""

    def __init__(self, points: np.ndarray, real_positions: np.ndarray, total: int, row_of_position: np.ndarray):
        self.points = points                  # (m, 32) H(y)^b, in ascending position order
        self.real_positions = real_positions  # (m,) ascending
        self.total = total                    # m + dummies
        self.row_of_position = row_of_position  # (total,) input row at each position, −1 for dummies

    def spread(self, values: Sequence[int] | np.ndarray) -> np.ndarray:
        """One value per input row → one per position (0 at dummy positions)."""
        v = np.asarray(values, dtype=np.int64)
        out = np.zeros(self.total, dtype=np.int64)
        real = self.row_of_position >= 0
        out[real] = v[self.row_of_position[real]]
        return out


def provider_table(ids: Sequence[str], n_dummies: int, key: bytes, domain: bytes,
                   backend: EcBackend | str | None = None, rng: Rng | None = None) -> ProviderTable:
    """P: ``H(y)^b`` of its distinct identifiers at random positions among ``len(ids) + n_dummies``."""
    ec = resolve_backend(backend)
    m, total = len(ids), len(ids) + int(n_dummies)
    if n_dummies < 0 or len(set(ids)) != m:
        raise InvalidInput("the provider's identifiers must be distinct")
    perm = random_permutation(total, rng).astype(np.int64)     # row i (or dummy i − m) → position perm[i]
    row_of_position = np.full(total, -1, dtype=np.int64)
    row_of_position[perm[:m]] = np.arange(m)
    real_positions = np.sort(perm[:m])
    rows = row_of_position[real_positions]
    pts = ec.hash_to_points([ids[i] for i in rows.tolist()], domain) if m else np.empty((0, POINT_LEN), np.uint8)
    return ProviderTable(ec.scalarmult_batch(key, pts), real_positions, total, row_of_position)


def _match_index(needles: np.ndarray, haystack: np.ndarray) -> np.ndarray:
    """For each needle the index of an equal haystack row, or −1 (8-byte prefix sort + full check)."""
    out = np.full(len(needles), -1, dtype=np.int64)
    if not len(needles) or not len(haystack):
        return out
    hk = np.ascontiguousarray(haystack[:, :8]).view(">u8").ravel()
    order = np.argsort(hk, kind="stable")
    keys = hk[order]
    nk = np.ascontiguousarray(needles[:, :8]).view(">u8").ravel()
    lo = np.searchsorted(keys, nk, side="left")
    hi = np.searchsorted(keys, nk, side="right")
    cand = np.nonzero(hi > lo)[0]
    first = order[lo[cand]]
    full = (haystack[first] == needles[cand]).all(axis=1)
    out[cand[full]] = first[full]
    for i in cand[~full]:          # rows sharing an 8-byte prefix: probability ~n²/2⁶⁵
        for j in order[lo[i]:hi[i]]:
            if (haystack[j] == needles[i]).all():
                out[i] = j
                break
    return out


def assign_positions(double: np.ndarray, sizes: np.ndarray, provider_points: np.ndarray,
                     real_positions: np.ndarray, total: int, key: bytes, backend: EcBackend | str | None = None,
                     rng: Rng | None = None) -> tuple[np.ndarray, np.ndarray]:
    """R: ``(layout, matches)`` — layout[position] = group number or :data:`UNASSIGNED`;
    every group gets exactly ``sizes[g]`` positions (its matches, then random dummies)."""
    ec = resolve_backend(backend)
    _check_sizes(double, sizes)
    m = len(provider_points)
    rp = np.asarray(real_positions, dtype=np.int64)
    if provider_points.shape != (m, POINT_LEN) or len(rp) != m or total < m or \
            (m and (rp[0] < 0 or rp[-1] >= total or (np.diff(rp) <= 0).any())):
        raise InvalidInput("the provider's table is malformed")
    theirs = ec.scalarmult_batch(key, provider_points)
    hit = _match_index(double, theirs)
    found = hit[hit >= 0]
    if len(np.unique(found)) != len(found):
        raise InvalidInput("the provider's table repeats an identifier")
    group_of_row = np.repeat(np.arange(len(sizes)), sizes)
    layout = np.full(total, UNASSIGNED, dtype=np.int64)
    layout[rp[found]] = group_of_row[hit >= 0]
    matches = np.bincount(group_of_row[hit >= 0], minlength=len(sizes))
    need = np.asarray(sizes, dtype=np.int64) - matches
    dummies = np.setdiff1d(np.arange(total, dtype=np.int64), rp, assume_unique=True)
    if int(need.sum()) > len(dummies):
        raise InvalidInput("the provider's table has too few dummy positions")
    chosen = dummies[random_permutation(len(dummies), rng)[: int(need.sum())]]
    layout[chosen] = np.repeat(np.arange(len(sizes)), need)
    return layout, matches
