"""Exact set membership of 32-byte group elements: lives in :mod:`pc_common.point_sets`,
shared with the coordinator's k-party combiner (:mod:`pc_common.psi_plan`)."""
from __future__ import annotations

from pc_common.point_sets import SortedPoints, intersect_rows, member_mask

__all__ = ["SortedPoints", "intersect_rows", "member_mask"]
