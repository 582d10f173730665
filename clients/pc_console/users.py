"""The console's users (SQLite, ``DATA_DIR/users.db``, 0600): argon2id password hashes, TOTP
secrets, roles, the `pc` identity each user acts with, and the lockout counters.

Roles and the identity they need (the console acts with that identity, so the node and the
coordinator check every call exactly as they check the `pc` command):

    analyst   a client certificate (pc://client/AGENCY/USER): verifications, own jobs, results
    officer   an officer certificate (pc://officer/AGENCY/USER): approvals; TOTP required
    operator  an operator certificate (pc://operator/platform/USER): nodes, jobs, catalog; TOTP required
    auditor   no certificate: the audit logs of console.toml's [audit_logs]; TOTP required

Five failed logins in a row lock the account for 15 minutes; a TOTP code is accepted once.
Every failure looks the same to the caller (``LoginFailed``), whichever check failed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import sqlite3
import threading
import time

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography import x509

from pc_common.certs import PartyFiles
from pc_common.errors import InvalidInput, PcError
from pc_common.identity import NAME_RE, identity_of

ROLES = ("analyst", "officer", "operator", "auditor")
CERT_ROLE = {"analyst": "client", "officer": "officer", "operator": "operator"}
TOTP_REQUIRED = ("officer", "operator", "auditor")
MAX_FAILURES = 5
LOCKOUT_S = 15 * 60
MIN_PASSWORD = 10

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY,
    party         TEXT NOT NULL,
    roles         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    totp_secret   TEXT,
    cert TEXT, key TEXT, ca TEXT,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  REAL NOT NULL DEFAULT 0,
    last_totp     INTEGER NOT NULL DEFAULT 0
);
"""


class LoginFailed(PcError):
    """Wrong username, password or code (deliberately not saying which)."""


class AccountLocked(PcError):
    """Too many failures: locked for a while."""


@dataclasses.dataclass(frozen=True)
class User:
    username: str
    party: str
    roles: tuple[str, ...]
    identity: PartyFiles | None     # the pc identity the console acts with (None for an auditor)

    @property
    def role(self) -> str:
        return self.roles[0]


class UserStore:
    def __init__(self, path, clock=time.time):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        if new:
            os.chmod(self.path, 0o600)
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))   # same work for unknown names
        self.clock = clock

    def close(self) -> None:
        self._db.close()

    # ----- administration (pc console user add) -------------------------------------------------
    def add(self, username: str, party: str, roles, password: str, identity: PartyFiles | None = None,
            totp: bool | None = None) -> str | None:
        """Add or replace a user; returns the TOTP secret (None when the user has no second factor)."""
        roles = tuple(roles)
        if not NAME_RE.match(username or ""):
            raise InvalidInput("user name must match [a-z][a-z0-9_]*")
        if not roles or any(r not in ROLES for r in roles):
            raise InvalidInput(f"roles must be some of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters")
        needs_cert = [r for r in roles if r in CERT_ROLE]
        if len({CERT_ROLE[r] for r in needs_cert}) > 1:
            raise InvalidInput("one console user acts with one pc identity: analyst, officer and operator "
                               "are separate users")
        if needs_cert:
            if identity is None:
                raise InvalidInput(f"role {needs_cert[0]} needs the user's pc certificate (--cert, --key, --ca)")
            who = identity_of(x509.load_pem_x509_certificate(identity.cert.read_bytes()))
            if who.role != CERT_ROLE[needs_cert[0]] or who.agency != party:
                raise InvalidInput(f"the certificate is {who.uri}, not a {CERT_ROLE[needs_cert[0]]} of '{party}'")
        elif identity is not None:
            raise InvalidInput("an auditor acts with no pc identity (give no certificate)")
        totp = bool(totp) or any(r in TOTP_REQUIRED for r in roles)
        secret = pyotp.random_base32() if totp else None
        files = [str(p.resolve()) for p in (identity.cert, identity.key, identity.ca)] if identity else [None] * 3
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO users(username, party, roles, password_hash, totp_secret,"
                             " cert, key, ca) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (username, party, json.dumps(list(roles)), self._hasher.hash(password), secret, *files))
        return secret

    # ----- login ------------------------------------------------------------------------------
    def authenticate(self, username: str, password: str, code: str) -> User:
        now = self.clock()
        with self._lock:
            row = self._db.execute("SELECT username, party, roles, password_hash, totp_secret, cert, key, ca,"
                                   " failures, locked_until, last_totp FROM users WHERE username = ?",
                                   (username,)).fetchone()
            if row is None:
                self._check(self._dummy, password)
                raise LoginFailed("wrong user name, password or code")
            if row[9] > now:
                raise AccountLocked("account locked after repeated failures; try again later")
            ok = self._check(row[3], password)
            step = None
            if ok and row[4]:
                step = _totp_step(row[4], code, now)
                ok = step is not None and step > row[10]
            if not ok:
                failures = row[8] + 1
                locked = now + LOCKOUT_S if failures >= MAX_FAILURES else 0
                self._db.execute("UPDATE users SET failures = ?, locked_until = ? WHERE username = ?",
                                 (0 if locked else failures, locked, username))
                if locked:
                    raise AccountLocked("account locked after repeated failures; try again later")
                raise LoginFailed("wrong user name, password or code")
            self._db.execute("UPDATE users SET failures = 0, last_totp = ? WHERE username = ?",
                             (step or row[10], username))
        identity = PartyFiles(pathlib.Path(row[5]), pathlib.Path(row[6]), pathlib.Path(row[7])) if row[5] else None
        return User(row[0], row[1], tuple(json.loads(row[2])), identity)

    def _check(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return False

    def usernames(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT username FROM users ORDER BY username")]


def _totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step ``code`` is valid for (this one or the one before, for clock drift), else None."""
    code = (code or "").strip()
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    for drift in (0, -1, 1):
        t = now + drift * totp.interval
        if secrets.compare_digest(totp.at(t), code):
            return int(t // totp.interval)
    return None


def new_password() -> str:
    return secrets.token_urlsafe(15)
