"""One exception hierarchy for the whole service.

Messages are written for users and never contain identifiers, values or keys.
These are plain exceptions, usable by the transport-free protocol cores; the one table
that maps them to gRPC status codes lives with the RPC plumbing (``pc_common.rpc.STATUS``).
"""
from __future__ import annotations


class PcError(Exception):
    """Base of every error this service raises on purpose."""


class InvalidInput(PcError):
    """A file, message, rule or argument is malformed."""


class NotFound(PcError):
    """A job, dataset, node or file does not exist."""


class AlreadyExists(PcError):
    """The thing to create exists already."""


class PermissionDenied(PcError):
    """The caller's identity or the policy does not allow the request."""


class Unauthenticated(PcError):
    """The peer presented no usable certificate."""


class ResourceExhausted(PcError):
    """A quota was exceeded or the requester is suspended."""


class FailedPrecondition(PcError):
    """The request is well-formed but the system is not in a state to serve it."""


class Unavailable(PcError):
    """A peer is offline or did not answer."""


class IntegrityError(PcError):
    """Authentication of ciphertext, signature or audit chain failed.

    Deliberately opaque: it never says which check failed.
    """


class CryptoError(PcError):
    """A cryptographic object (key, ciphertext, point) is unusable."""


class OverflowDetected(PcError):
    """A homomorphic sum left the plaintext space; the result would be wrong."""
