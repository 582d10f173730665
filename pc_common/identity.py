"""Who is calling: identities bound to mutual-TLS certificates.

Every party's identity is a URI in its certificate's subjectAltName:
``pc://coordinator/coordinator``, ``pc://node/<node_id>``,
``pc://client/<agency>/<user>``, ``pc://officer/<agency>/<user>`` and
``pc://operator/platform/<user>``. Servers read it from the verified peer certificate,
never from a message field.

A node certificate also carries the node's SM2 signing key and X25519 envelope key in a
private extension, so the CA's signature binds them to the node and the coordinator
cannot substitute them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier

from pc_common.errors import InvalidInput, Unauthenticated

NODE_KEYS_OID = ObjectIdentifier("1.3.6.1.4.1.61000.1.1")
ROLES = ("coordinator", "node", "client", "officer", "operator")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def check_name(kind: str, name: str) -> str:
    """Node, agency, user and dataset names: lowercase, digits, underscore."""
    if not NAME_RE.match(name or ""):
        raise InvalidInput(f"{kind} name must match [a-z][a-z0-9_]* (at most 63 characters)")
    return name


@dataclasses.dataclass(frozen=True)
class Identity:
    role: str
    agency: str   # node id for nodes, agency for clients/officers, "platform" otherwise
    user: str = ""

    @property
    def uri(self) -> str:
        if self.role in ("coordinator",):
            return "pc://coordinator/coordinator"
        if self.role == "node":
            return f"pc://node/{self.agency}"
        return f"pc://{self.role}/{self.agency}/{self.user}"

    @classmethod
    def parse(cls, uri: str) -> "Identity":
        m = re.fullmatch(r"pc://([a-z]+)/([a-z0-9_]+)(?:/([a-z0-9_]+))?", uri)
        if not m or m.group(1) not in ROLES:
            raise Unauthenticated("certificate carries no valid pc:// identity")
        role, agency, user = m.group(1), m.group(2), m.group(3) or ""
        if role in ("client", "officer", "operator") and not user:
            raise Unauthenticated("certificate identity lacks a user name")
        return cls(role, agency, user)

    def __str__(self) -> str:
        return self.uri


@dataclasses.dataclass(frozen=True)
class NodeKeys:
    """Public keys bound to a node certificate."""

    sm2_public: str        # hex, uncompressed point 04 ‖ x ‖ y (Sm2PublicKey.to_hex)
    x25519_public: bytes   # 32 bytes


def identity_of(cert: x509.Certificate) -> Identity:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        raise Unauthenticated("certificate has no subjectAltName identity") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("pc://")]
    if len(uris) != 1:
        raise Unauthenticated("certificate must carry exactly one pc:// identity")
    return Identity.parse(uris[0])


def node_keys_of(cert: x509.Certificate) -> NodeKeys:
    try:
        raw = cert.extensions.get_extension_for_oid(NODE_KEYS_OID).value.value
        doc = json.loads(raw)
        return NodeKeys(sm2_public=str(doc["sm2"]), x25519_public=bytes.fromhex(doc["x25519"]))
    except (x509.ExtensionNotFound, ValueError, KeyError, TypeError):
        raise InvalidInput("node certificate carries no usable key binding") from None


def node_keys_extension(sm2_public_hex: str, x25519_public: bytes) -> x509.UnrecognizedExtension:
    raw = json.dumps({"sm2": sm2_public_hex, "x25519": x25519_public.hex()}, sort_keys=True).encode()
    return x509.UnrecognizedExtension(NODE_KEYS_OID, raw)


@functools.lru_cache(maxsize=256)
def identity_from_pem(pem: bytes) -> Identity:
    return identity_of(x509.load_pem_x509_certificate(pem))
