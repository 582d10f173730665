"""Signed job specifications (抗抵赖).

A job spec is canonical JSON created and SM2-signed by the requester node on behalf of
its own client; the coordinator relays it and every provider verifies it against the
SM2 key bound to the requester's CA-signed certificate. A coordinator that invents or
alters a query therefore cannot produce a valid signature. Nonce (the job id) and expiry
stop replays.

Two lifetimes: ``expires_at`` is the transport expiry (the spec must be submitted, and first
seen by every party, by then: 15 minutes), ``admission_until`` the job's lifetime (approvals
may come days later; default 7 days). A party that already saw the spec in time checks the
job's lifetime on every later admission poll and step (``verify(..., first_seen=...)``).
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import re
import secrets
import string
import threading
import time

from cryptography import x509

from pc_common import gm, job_kinds
from pc_common.errors import CryptoError, IntegrityError, InvalidInput, PcError, PermissionDenied
from pc_common.identity import identity_of, node_keys_of

KINDS = tuple(job_kinds.KINDS)      # the one table of job kinds; their params: job_kinds.params_of
DEFAULT_TTL_SECONDS = 15 * 60                 # transport: submit (and first admission) by then
DEFAULT_LIFETIME_SECONDS = 7 * 86400          # the job: admission, approval and every step by then
MAX_LIFETIME_SECONDS = 31 * 86400
MAX_SPEC_BYTES = 256 * 1024


JOB_ID_RE = re.compile(r"^[a-z]{20}$")


def new_job_id() -> str:
    """20 random lowercase letters (94 bits). No digits: a job id can never look like an
    identity or phone number to the audit log's personal-data guard."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build(kind: str, requester: str, params: dict, purpose: str, ttl: int = DEFAULT_TTL_SECONDS,
          now: float | None = None, job_id: str | None = None,
          lifetime: int = DEFAULT_LIFETIME_SECONDS) -> bytes:
    """A canonical spec: submit it within ``ttl`` seconds; the job may live ``lifetime`` seconds."""
    job_kinds.kind(kind)
    if not 0 < lifetime <= MAX_LIFETIME_SECONDS:
        raise InvalidInput(f"a job's lifetime must be between 1 second and {MAX_LIFETIME_SECONDS // 86400} days")
    now = time.time() if now is None else now
    return canonical({
        "v": 1, "kind": kind, "job_id": job_id or new_job_id(), "requester": requester,
        "purpose": purpose, "params": params, "nonce": secrets.token_hex(16),
        "issued_at": int(now), "expires_at": int(now + min(ttl, lifetime)),
        "admission_until": int(now + lifetime),
    })


def lifetime_end(doc: dict) -> int:
    """When the job's lifetime ends (its node-side records may be forgotten a while after)."""
    return doc.get("admission_until", doc["expires_at"])


def sign(spec: bytes, key: gm.Sm2PrivateKey) -> bytes:
    return key.sign(spec)


def parse(spec: bytes) -> dict:
    if len(spec) > MAX_SPEC_BYTES:
        raise InvalidInput("job spec is too large")
    try:
        doc = json.loads(spec)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("job spec is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("kind") not in KINDS:
        raise InvalidInput("job spec has an unknown version or kind")
    for field in ("job_id", "requester", "purpose", "nonce"):
        if not isinstance(doc.get(field), str) or not doc[field]:
            raise InvalidInput(f"job spec lacks '{field}'")
    if not JOB_ID_RE.match(doc["job_id"]):
        raise InvalidInput("job spec has a malformed job id")
    if not isinstance(doc.get("params"), dict) or not isinstance(doc.get("expires_at"), int):
        raise InvalidInput("job spec lacks params or expiry")
    if not isinstance(doc.get("issued_at"), int):
        raise InvalidInput("job spec lacks its issue time")
    if "admission_until" in doc:
        until = doc["admission_until"]
        if not isinstance(until, int) or until < doc["expires_at"] or until > doc["issued_at"] + MAX_LIFETIME_SECONDS:
            raise InvalidInput("job spec has a malformed lifetime (admission_until)")
    if canonical(doc) != spec:
        raise InvalidInput("job spec is not in canonical form")
    return doc


def verify(spec: bytes, signature: bytes, signer_cert_pem: bytes, ca_pem: bytes,
           now: float | None = None, first_seen: float | None = None) -> dict:
    """Check signature, signer identity and lifetimes; return the parsed spec.

    Raises PermissionDenied for anything that is not a valid, current spec signed by the
    requester node it names. The signer certificate must chain to our CA. ``first_seen`` is
    when this party first accepted this very spec (None: now, a first sight): it must have
    been before the transport expiry, and ``now`` must be within the job's lifetime.
    """
    doc = parse(spec)
    _check_signature(spec, signature, signer_cert_pem, ca_pem, doc["requester"])
    now = time.time() if now is None else now
    if (now if first_seen is None else first_seen) > doc["expires_at"]:
        raise PermissionDenied(f"job spec has expired: it had to be submitted by {_iso(doc['expires_at'])}")
    if now > lifetime_end(doc):
        raise PermissionDenied(f"the job's lifetime ended at {_iso(lifetime_end(doc))}")
    if doc["issued_at"] > now + 300:
        raise PermissionDenied("job spec is issued in the future")
    return doc


_VERIFIED: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()   # signatures found valid
_VERIFIED_MAX = 512
_verified_lock = threading.Lock()


def _memo(spec: bytes, signature: bytes, sm2_public_hex: str) -> bytes:
    return hashlib.sha256(b"\0".join(hashlib.sha256(x).digest() for x in
                                      (spec, signature, sm2_public_hex.encode()))).digest()


def _remember(memo: bytes) -> None:
    with _verified_lock:
        _VERIFIED[memo] = None
        while len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)


def remember_signed(spec: bytes, signature: bytes, sm2_public_hex: str) -> None:
    """The requester node's own signature, just made: its later steps need not verify it."""
    _remember(_memo(spec, signature, sm2_public_hex))


def _check_signature(spec: bytes, signature: bytes, signer_cert_pem: bytes, ca_pem: bytes, requester: str) -> None:
    """The signer certificate chains to the CA and names the requester node, and its SM2 key
    signed ``spec``. A party checks one spec at admission and again at each of its steps; the SM2
    verification (0.4 ms on OpenSSL's curve, 13–30 ms where only gmssl is there) runs once per
    exact (spec, signature, key) — the certificate and time checks every time."""
    try:
        cert = x509.load_pem_x509_certificate(signer_cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - any failure means "not ours"
        raise PermissionDenied("job spec signer certificate is not issued by the federation CA") from None
    try:
        ident, public = identity_of(cert), node_keys_of(cert).sm2_public
    except PcError:
        raise PermissionDenied("job spec signer certificate carries no node identity and keys") from None
    if ident.role != "node" or ident.agency != requester:
        raise PermissionDenied("job spec is not signed by the requester node it names")
    memo = _memo(spec, signature, public)
    with _verified_lock:
        if memo in _VERIFIED:
            _VERIFIED.move_to_end(memo)
            return
    try:
        gm.Sm2PublicKey.from_hex(public).verify(spec, signature)
    except (CryptoError, IntegrityError, InvalidInput, ValueError):
        raise PermissionDenied("job spec signature is invalid") from None
    _remember(memo)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def expires_iso(doc: dict) -> str:
    return dt.datetime.fromtimestamp(doc["expires_at"], dt.timezone.utc).isoformat()
