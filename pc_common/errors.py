"""One exception hierarchy for the whole service.

Messages are written for users and never contain identifiers, values or keys.
Each error carries the gRPC status it maps to, so servers translate domain errors
in one place (see ``pc_common.grpc_errors``).
"""
from __future__ import annotations

import grpc


class PcError(Exception):
    """Base of every error this service raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(PcError):
    """A file, message, rule or argument is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(PcError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PcError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(PcError):
    """The caller's identity or the policy does not allow the request."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(PcError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(PcError):
    """A quota was exceeded or the requester is suspended."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(PcError):
    """The request is well-formed but the system is not in a state to serve it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(PcError):
    code = grpc.StatusCode.UNAVAILABLE


class IntegrityError(PcError):
    """Authentication of ciphertext, signature or audit chain failed.

    Deliberately opaque: it never says which check failed.
    """

    code = grpc.StatusCode.DATA_LOSS


class CryptoError(PcError):
    """A cryptographic object (key, ciphertext, point) is unusable."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class OverflowDetected(PcError):
    """A homomorphic sum left the plaintext space; the result would be wrong."""

    code = grpc.StatusCode.OUT_OF_RANGE
