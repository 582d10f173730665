"""Tamper-evident audit log (全程留痕, 可追溯, 抗抵赖) on SQLite.

Each entry is stored as columns and hashed as canonical JSON (sorted keys, no spaces, UTF-8)::

    hash_n = SM3(canonical(entry_n) || hash_{n-1}),    hash_0 = 32 zero bytes

Every ``checkpoint_every`` entries (and on :meth:`AuditLog.checkpoint`) the head ``(seq, hash)``
is signed with the node's SM2 key and stored in a second table. :meth:`AuditLog.verify` then
detects an edited, deleted, inserted or reordered entry anywhere, and truncation of signed
entries. What it cannot detect on its own: removal of the *unsigned* tail after the latest
checkpoint, or replacement of the whole file; compare with an exported copy for those (an
export is always sealed by a fresh checkpoint). Retention purges leave a signed anchor holding
the hash of the last purged entry, so the remaining chain still verifies.

Entries must never hold raw personal data: every text field passes
:func:`assert_no_personal_data`.
"""
from __future__ import annotations

from pc_common.audit.chain import DEFAULT_RETENTION_DAYS, assert_no_personal_data, canonical_json
from pc_common.audit.log import AuditLog
from pc_common.audit.verification import VerifyReport, verify_export

__all__ = [
    "AuditLog",
    "VerifyReport",
    "verify_export",
    "assert_no_personal_data",
    "canonical_json",
    "DEFAULT_RETENTION_DAYS",
]
