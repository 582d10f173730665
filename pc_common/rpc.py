"""Server-side plumbing shared by node and coordinator.

``@rpc(roles)`` authenticates the caller from its certificate, checks the role, and maps
domain errors to gRPC status codes in one place. Unexpected exceptions become INTERNAL
with a generic message: details go to the log, never to the peer, and never include
identifiers or values (our exceptions do not carry them).
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable, Iterable

import grpc

from pc_common import errors
from pc_common.errors import PcError, PermissionDenied
from pc_common.identity import Identity
from pc_common.tls import peer_identity

log = logging.getLogger("pc.rpc")

# The one table from domain errors to gRPC status codes (most specific class first).
STATUS: dict[type[PcError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.CryptoError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.IntegrityError: grpc.StatusCode.DATA_LOSS,
    errors.OverflowDetected: grpc.StatusCode.OUT_OF_RANGE,
}


def status_of(exc: PcError) -> grpc.StatusCode:
    """The status a domain error is answered with; an error relayed from a peer keeps the peer's."""
    relayed = getattr(exc, "grpc_code", None)
    if isinstance(relayed, grpc.StatusCode):
        return relayed
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str):
    if isinstance(exc, PcError):
        context.abort(status_of(exc), str(exc) or exc.__class__.__name__)
    log.exception("unexpected failure in %s", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def rpc(*roles: str, check: Callable[[object, Identity], None] | None = None):
    """Decorate a servicer method; ``roles`` lists who may call it.

    The method receives the verified ``Identity`` as keyword ``caller``.
    """

    def decorate(fn):
        name = fn.__name__
        streaming = inspect.isgeneratorfunction(fn)

        def authorise(self, context) -> Identity:
            caller = peer_identity(context)
            if caller.role not in roles:
                raise PermissionDenied(f"{caller.role} certificates may not call {name}")
            if check is not None:
                check(self, caller)
            return caller

        if streaming:
            @functools.wraps(fn)
            def stream_wrapper(self, request, context) -> Iterable:
                try:
                    caller = authorise(self, context)
                    yield from fn(self, request, context, caller=caller)
                except grpc.RpcError:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    if context.is_active() or isinstance(exc, PcError):
                        _abort(context, exc, name)
            return stream_wrapper

        @functools.wraps(fn)
        def unary_wrapper(self, request, context):
            try:
                caller = authorise(self, context)
                return fn(self, request, context, caller=caller)
            except grpc.RpcError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                _abort(context, exc, name)
        return unary_wrapper

    return decorate
