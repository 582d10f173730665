"""Development certificate authority: ``pc certs init``.

Creates a CA and one certificate per party (ECDSA P-256, TLS 1.3 capable). A node's
certificate binds its SM2 signing key and X25519 envelope key (see ``identity``).

Layout under DIR::

    ca.pem, ca.key
    coordinator/cert.pem, key.pem
    nodes/<node>/cert.pem, key.pem, sm2.key, x25519.key
    clients/<agency>/<user>/cert.pem, key.pem   (role client, officer or operator)
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nacl.public import PrivateKey as X25519PrivateKey

from pc_common import gm
from pc_common.errors import InvalidInput
from pc_common.identity import Identity, check_name, node_keys_extension

VALID_DAYS = 825


@dataclasses.dataclass(frozen=True)
class PartyFiles:
    """Where one party's certificate material lives."""

    cert: pathlib.Path
    key: pathlib.Path
    ca: pathlib.Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()


def _write_private(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    def __init__(self, directory: pathlib.Path):
        self.dir = pathlib.Path(directory)
        self.ca_pem = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"

    def create(self, name: str = "pc development CA") -> None:
        if self.ca_pem.exists():
            raise InvalidInput(f"a CA already exists in {self.dir}")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                               critical=True)
                .sign(key, hashes.SHA256()))
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_private(self.ca_key, _key_pem(key))
        self.ca_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _load(self):
        if not self.ca_pem.exists() or not self.ca_key.exists():
            raise InvalidInput(f"no CA in {self.dir}; run 'pc certs init' first")
        cert = x509.load_pem_x509_certificate(self.ca_pem.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        return cert, key

    def issue(self, identity: Identity, out_dir: pathlib.Path, extra_extension=None) -> PartyFiles:
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        cn = identity.agency if identity.role in ("node", "coordinator") else f"{identity.user}@{identity.agency}"
        now = dt.datetime.now(dt.timezone.utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        if identity.role in ("node", "coordinator"):
            # Servers are reached on loopback in the sandbox and by their id elsewhere.
            names += [x509.DNSName(identity.agency), x509.DNSName("localhost"),
                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if extra_extension is not None:
            builder = builder.add_extension(extra_extension, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        out_dir.mkdir(parents=True, exist_ok=True)
        files = PartyFiles(out_dir / "cert.pem", out_dir / "key.pem", self.ca_pem)
        _write_private(files.key, _key_pem(key))
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files

    def issue_node(self, node_id: str) -> PartyFiles:
        check_name("node", node_id)
        return self.issue_keyed(Identity("node", node_id), self.dir / "nodes" / node_id)

    def issue_keyed(self, identity: Identity, out: pathlib.Path) -> PartyFiles:
        """A server certificate that binds an SM2 signing key and an X25519 envelope key."""
        sm2 = gm.Sm2PrivateKey.generate()
        x25519 = X25519PrivateKey.generate()
        _write_private(out / "sm2.key", sm2.private_hex().encode())
        _write_private(out / "x25519.key", bytes(x25519).hex().encode())
        ext = node_keys_extension(sm2.public_key().to_hex(), bytes(x25519.public_key))
        return self.issue(identity, out, ext)


def coordinator_files(directory: pathlib.Path) -> PartyFiles:
    d = pathlib.Path(directory)
    return PartyFiles(d / "coordinator" / "cert.pem", d / "coordinator" / "key.pem", d / "ca.pem")


def node_files(directory: pathlib.Path, node_id: str) -> PartyFiles:
    d = pathlib.Path(directory)
    return PartyFiles(d / "nodes" / node_id / "cert.pem", d / "nodes" / node_id / "key.pem", d / "ca.pem")


def client_files(directory: pathlib.Path, agency: str, user: str) -> PartyFiles:
    d = pathlib.Path(directory) / "clients" / agency / user
    return PartyFiles(d / "cert.pem", d / "key.pem", pathlib.Path(directory) / "ca.pem")


def parse_client_spec(spec: str) -> Identity:
    """``user@agency`` (an analyst), ``officer:user@agency`` or ``operator:user``."""
    role = "client"
    if ":" in spec:
        role, spec = spec.split(":", 1)
    if role == "operator":
        return Identity("operator", "platform", check_name("user", spec))
    if role not in ("client", "officer") or "@" not in spec:
        raise InvalidInput("client spec must be user@agency, officer:user@agency or operator:user")
    user, agency = spec.split("@", 1)
    return Identity(role, check_name("agency", agency), check_name("user", user))


def init(directory: pathlib.Path, nodes: list[str], clients: list[str]) -> CertificateAuthority:
    """Create a CA, the coordinator's certificate, and one per node and client."""
    ca = CertificateAuthority(directory)
    identities = [parse_client_spec(c) for c in clients]
    for n in nodes:
        check_name("node", n)
    ca.create()
    ca.issue_keyed(Identity("coordinator", "coordinator"), pathlib.Path(directory) / "coordinator")
    for n in nodes:
        ca.issue_node(n)
    for ident in identities:
        ca.issue(ident, pathlib.Path(directory) / "clients" / ident.agency / ident.user)
    return ca
