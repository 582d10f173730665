"""The console's own audit log: every login, failure, lockout, logout and action, in the
project's hash-chained, SM2-checkpointed format (``pc_common.audit``), at DATA_DIR/audit.db.

``pc audit verify --data-dir DATA_DIR`` verifies it like any node's log; the console's own
auditor page lists it as the party ``console``. Entries carry the user name and what was done,
never a password, a code, an identifier or a file's content.
"""
from __future__ import annotations

import os
import pathlib

from pc_common.audit import AuditLog
from pc_common.gm import Sm2PrivateKey

SIGNING_KEY = "audit_sm2.key"


def open_trail(data_dir: pathlib.Path, party: str) -> AuditLog:
    """The console's audit log, signed with a key of its own (made on first start, 0600)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / SIGNING_KEY
    if not key_path.exists():
        key = Sm2PrivateKey.generate()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key.private_hex())
    signer = Sm2PrivateKey.from_hex(key_path.read_text().strip())
    return AuditLog(data_dir / "audit.db", f"console:{party}", signer, checkpoint_every=20)
