"""Mutual TLS for every connection, and the identity of the peer of an RPC."""
from __future__ import annotations

import grpc

from pc_common.certs import PartyFiles
from pc_common.errors import InvalidInput, Unauthenticated
from pc_common.identity import Identity, identity_from_pem

# Bulk data is streamed in chunks (pc_common.wire.CHUNK_BYTES); anything bigger than
# MAX_MESSAGE_BYTES is refused by gRPC itself with RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 8 << 20

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Accept the clients' 30 s keepalive pings, also between calls (long PSI jobs).
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_ping_strikes", 0),
    # Refuse a port another process already serves (gRPC enables SO_REUSEPORT by default,
    # which would let a second server silently share the port and split the traffic).
    ("grpc.so_reuseport", 0),
]


def _read(files: PartyFiles) -> tuple[bytes, bytes, bytes]:
    try:
        return files.read()
    except FileNotFoundError as exc:
        raise InvalidInput(f"certificate file missing: {exc.filename}") from None


def server_credentials(files: PartyFiles) -> grpc.ServerCredentials:
    cert, key, ca = _read(files)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def secure_channel(address: str, files: PartyFiles, server_name: str) -> grpc.Channel:
    """A channel that presents our certificate and accepts only ``server_name``'s."""
    cert, key, ca = _read(files)
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(address, creds, options=options)


def peer_identity(context: grpc.ServicerContext) -> Identity:
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated("no client certificate presented")
    return identity_from_pem(pems[0])


def peer_certificate_pem(context: grpc.ServicerContext) -> bytes:
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        raise Unauthenticated("no client certificate presented")
    return pems[0]
