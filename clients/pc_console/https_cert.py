"""The console's HTTPS certificate, issued by the federation's CA (``pc certs``):
``pc console cert --certs DIR --out DIR [--host NAME]``.

It names only host names and addresses (server authentication only) and carries no pc://
identity, so no node or coordinator accepts it as a client: the console's own TLS key can never
act for anyone — every call it makes uses the logged-in user's certificate.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pc_common.errors import InvalidInput

VALID_DAYS = 825


def issue(certs_dir, out_dir, hosts=("localhost", "127.0.0.1"), name: str = "pc console") -> tuple[pathlib.Path, pathlib.Path]:
    """Write out_dir/cert.pem and key.pem (0600) signed by certs_dir/ca.pem + ca.key."""
    certs_dir, out_dir = pathlib.Path(certs_dir), pathlib.Path(out_dir)
    try:
        ca_cert = x509.load_pem_x509_certificate((certs_dir / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((certs_dir / "ca.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise InvalidInput(f"no CA in {certs_dir}; run 'pc certs init' first") from None
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "console")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out_dir / "key.pem", out_dir / "cert.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
