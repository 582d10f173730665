"""Identifier normalisation and the byte encoding of PSI protocol messages.

Every message the PSI cores produce or accept is plain ``bytes`` so that the transport can put
it into a protobuf ``bytes`` field unchanged:

* a *point chunk* is ``count`` group elements of :data:`POINT_LEN` bytes, concatenated;
* an *index list* (result-to-both option) is ``count`` little-endian ``uint32`` values.

Decoders validate lengths and raise :class:`CryptoError`; error messages never contain
identifiers, points or keys.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from pc_common.errors import CryptoError, InvalidInput

__all__ = [
    "POINT_LEN",
    "as_points",
    "decode_indices",
    "decode_points",
    "encode_indices",
    "encode_points",
    "NormalIds",
    "normalise_id",
    "normalise_ids",
    "split_chunks",
]

from pc_common.wire import POINT_LEN  # noqa: E402 (one source of truth)
#: Largest number of points in one chunk we accept (64 MiB of points); a chunk is meant to be
#: far smaller (the transport keeps messages under gRPC's 4 MiB default).
MAX_CHUNK_POINTS = 2_000_000

_WS = re.compile(r"\s+")


def normalise_id(value: str) -> str:
    """Normal form of one identifier: NFKC, all whitespace removed, upper case.

    ``" 11010519491231002x "`` and ``"110105 19491231002X"`` normalise to the same string.
    Validation of the identifier's format (check digits and so on) is the caller's business.
    """
    if not isinstance(value, str):
        raise InvalidInput("identifiers must be strings")
    return _WS.sub("", unicodedata.normalize("NFKC", value)).upper()


class NormalIds(tuple):
    """Identifiers already normalised and distinct, in order (an immutable result of
    :func:`normalise_ids`): :func:`normalise_ids` hands them back unchanged, so a node that
    keeps a dataset's ids in this form (``NodeStore.subject_ids``) pays the pass once per
    dataset version, not once per job and step."""

    __slots__ = ()


def normalise_ids(values: Iterable[str]) -> list[str] | NormalIds:
    """Normalise and de-duplicate, keeping the first occurrence's position; empty ids dropped.

    PSI works on *sets*: two rows whose identifiers normalise to the same string count once.
    Vectorised for the usual case, ASCII identifiers (NFKC leaves ASCII unchanged): one join,
    one whitespace pass, one ``upper`` and one split over the whole list (≈ 20× the per-item
    loop, which stays for non-ASCII input). Same result either way (tested). A
    :class:`NormalIds` comes back as it is.
    """
    if type(values) is NormalIds:
        return values
    values = values if isinstance(values, list) else list(values)
    try:
        joined = _SEP.join(values)
    except TypeError:
        raise InvalidInput("identifiers must be strings") from None
    if not values or not joined.isascii() or joined.count(_SEP) != len(values) - 1:
        return _normalise_each(values)
    raw = joined.encode("ascii")
    codes = np.frombuffer(raw, dtype=np.uint8)
    space = _ASCII_SPACE[codes]
    if space.any():
        raw = codes[~space].tobytes()
    parts = raw.upper().decode("ascii").split(_SEP)     # bytes.upper: ASCII letters, as str.upper
    if "" in parts or len(set(parts)) != len(parts):     # the set is cheaper than the dict
        seen = dict.fromkeys(parts)
        seen.pop("", None)
        return list(seen)
    return parts


_SEP = "\x00"      # not whitespace, so it survives normalisation; an id holding it goes item by item
_ASCII_SPACE = np.zeros(256, dtype=bool)     # the ASCII characters ``\s`` removes
_ASCII_SPACE[[c for c in range(128) if _WS.fullmatch(chr(c))]] = True


def _normalise_each(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        n = normalise_id(v)
        if n:
            seen.setdefault(n, None)
    return list(seen)


def as_points(points: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """View ``points`` as an ``(n, 32)`` uint8 array (no copy where possible).

    Accepts concatenated bytes or an array of shape ``(n, 32)``; anything else → CryptoError.
    """
    if isinstance(points, np.ndarray):
        if points.dtype != np.uint8 or points.ndim != 2 or points.shape[1] != POINT_LEN:
            raise CryptoError("points must be an (n, 32) uint8 array")
        return points
    if isinstance(points, (bytes, bytearray, memoryview)):
        data = memoryview(points).cast("B")
        if len(data) % POINT_LEN:
            raise CryptoError("point data length is not a multiple of 32 bytes")
        return np.frombuffer(data, dtype=np.uint8).reshape(-1, POINT_LEN)
    raise CryptoError("points must be bytes or an (n, 32) uint8 array")


def encode_points(points: bytes | np.ndarray) -> bytes:
    """Concatenated 32-byte encodings (the wire form of a chunk)."""
    arr = as_points(points)
    return np.ascontiguousarray(arr).tobytes()


def decode_points(data: bytes | bytearray | memoryview, count: int | None = None) -> np.ndarray:
    """Parse one chunk; ``count`` (when the message carries one) must agree with the length.

    Returns a read-only ``(n, 32)`` uint8 view of ``data``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError("point chunk must be bytes")
    n_bytes = memoryview(data).nbytes
    if n_bytes % POINT_LEN:
        raise CryptoError("point chunk length is not a multiple of 32 bytes")
    n = n_bytes // POINT_LEN
    if n > MAX_CHUNK_POINTS:
        raise CryptoError("point chunk is too large")
    if count is not None:
        if not isinstance(count, int) or count < 0:
            raise CryptoError("point count must be a non-negative integer")
        if count != n:
            raise CryptoError("point chunk length does not match its count")
    arr = np.frombuffer(bytes(data) if isinstance(data, bytearray) else data, dtype=np.uint8)
    return arr.reshape(n, POINT_LEN)


def encode_indices(indices: Sequence[int] | np.ndarray) -> bytes:
    """Little-endian uint32 list (positions into a peer's shuffled list)."""
    arr = np.asarray(indices, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and (arr.min() < 0 or arr.max() >= 2**32)):
        raise InvalidInput("indices must be a flat list of non-negative 32-bit integers")
    return arr.astype("<u4").tobytes()


def decode_indices(data: bytes, bound: int, count: int | None = None) -> np.ndarray:
    """Parse an index list; every index must be ``< bound`` and appear once."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError("index list must be bytes")
    if memoryview(data).nbytes % 4:
        raise CryptoError("index list length is not a multiple of 4 bytes")
    arr = np.frombuffer(data, dtype="<u4").astype(np.int64)
    if count is not None and count != arr.size:
        raise CryptoError("index list length does not match its count")
    if arr.size and int(arr.max()) >= bound:
        raise CryptoError("index out of range")
    if np.unique(arr).size != arr.size:
        raise CryptoError("index list has repeated entries")
    return arr


def split_chunks(points: np.ndarray, chunk_size: int) -> Iterable[bytes]:
    """Yield ``points`` as wire chunks of at most ``chunk_size`` points (nothing if empty)."""
    check_chunk_size(chunk_size)
    for lo in range(0, len(points), chunk_size):
        yield np.ascontiguousarray(points[lo:lo + chunk_size]).tobytes()


def check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or not 0 < chunk_size <= MAX_CHUNK_POINTS:
        raise InvalidInput("chunk size must be a positive integer")
