"""Wire format and derivations of the lookup filter (see :mod:`pc_node.psi.lookup`).

Snapshot: ``b"PCLS\\x01" || u32 header length || JSON header || tags || label records``.
Delta:    ``b"PCLD\\x01" || u32 header length || JSON header || removed tags || removed records
|| added tags || added records``. Tags are big-endian, ``tag_bytes`` each; a label record is
``nonce(12) || SM4-GCM(len(2) || payload || padding) || tag(16)``. Parsers check every length
and raise :class:`CryptoError`.
"""
from __future__ import annotations

import json
import re
import struct

import numpy as np

from pc_common.errors import CryptoError, IntegrityError, InvalidInput

from .hashing import sm3_hasher

LOOKUP_DOMAIN = b"pc.lookup.v1"
TAG_CTX = b"pc.lookup.tag"
KEY_CTX = b"pc.lookup.label"
SNAPSHOT_MAGIC = b"PCLS\x01"
DELTA_MAGIC = b"PCLD\x01"
MAX_HEADER = 4096
GCM_OVERHEAD = 12 + 16
LEN_PREFIX = 2
MAX_LABEL = 4096
BUILD_BATCH = 32768
EPOCH_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def record_len(label_size: int) -> int:
    return GCM_OVERHEAD + LEN_PREFIX + label_size if label_size else 0


def check_params(epoch: str, tag_bytes: int, label_size: int) -> None:
    if not isinstance(epoch, str) or not EPOCH_RE.match(epoch):
        raise InvalidInput("epoch must be 1-64 characters of letters, digits and . _ : -")
    if not isinstance(tag_bytes, int) or not 4 <= tag_bytes <= 8:
        raise InvalidInput("tag_bytes must be between 4 and 8")
    if not isinstance(label_size, int) or not 0 <= label_size <= MAX_LABEL:
        raise InvalidInput(f"label_size must be between 0 and {MAX_LABEL}")


def digest16(f_values: np.ndarray) -> np.ndarray:
    """``(n, 2)`` uint64 (big-endian halves) of SM3(tag ctx || F) truncated to 16 bytes."""
    n = len(f_values)
    raw = f_values.tobytes()
    base = sm3_hasher(TAG_CTX)
    parts = []
    for i in range(0, 32 * n, 32):
        h = base.copy()
        h.update(raw[i:i + 32])
        parts.append(h.digest()[:16])
    return np.frombuffer(b"".join(parts), dtype=">u8").reshape(n, 2).astype(np.uint64)


def tags_from_digest(d16: np.ndarray, tag_bytes: int) -> np.ndarray:
    return d16[:, 0] >> np.uint64(64 - 8 * tag_bytes)


def label_key(f_value: bytes) -> bytes:
    return sm3_hasher(KEY_CTX + f_value).digest()[:16]


def label_aad(epoch: str, tag: int, tag_bytes: int) -> bytes:
    return b"pc.lookup.label|" + epoch.encode() + b"|" + int(tag).to_bytes(tag_bytes, "big")


def tags_to_bytes(tags: np.ndarray, tag_bytes: int) -> bytes:
    return tags.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - tag_bytes:].tobytes()


def tags_from_bytes(data: memoryview, count: int, tag_bytes: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8).reshape(count, tag_bytes)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, 8 - tag_bytes:] = raw
    return full.view(">u8").ravel().astype(np.uint64)


def pack(magic: bytes, header: dict, *bodies: bytes) -> bytes:
    hj = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join((magic, struct.pack(">I", len(hj)), hj, *bodies))


def unpack(magic: bytes, data: bytes) -> tuple[dict, memoryview]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError("lookup message must be bytes")
    view = memoryview(data).cast("B")
    if len(view) < len(magic) + 4 or bytes(view[:len(magic)]) != magic:
        raise CryptoError("not a lookup message of the expected kind")
    (hlen,) = struct.unpack(">I", view[len(magic):len(magic) + 4])
    start = len(magic) + 4
    if hlen > MAX_HEADER or start + hlen > len(view):
        raise CryptoError("lookup message header is malformed")
    try:
        header = json.loads(bytes(view[start:start + hlen]))
    except ValueError:
        raise CryptoError("lookup message header is malformed") from None
    if not isinstance(header, dict):
        raise CryptoError("lookup message header is malformed")
    return header, view[start + hlen:]


def int_field(header: dict, name: str, lo: int, hi: int) -> int:
    v = header.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CryptoError("lookup message header is malformed")
    return v


def encode_label(payload: bytes, label_size: int) -> bytes:
    if not isinstance(payload, (bytes, bytearray)):
        raise InvalidInput("labels must be bytes")
    if len(payload) > label_size:
        raise InvalidInput("a label is longer than label_size")
    return len(payload).to_bytes(2, "big") + bytes(payload) + bytes(label_size - len(payload))


def decode_label(plain: bytes) -> bytes:
    n = int.from_bytes(plain[:2], "big")
    if n > len(plain) - 2:
        raise IntegrityError("label failed authentication")
    return plain[2:2 + n]


# ----- the requester's binding of its blinded stream to one job --------------------------------------
BINDING_CTX = b"pc/lookup/binding\x00"
MAX_BINDING_CHUNKS = 1 << 16
_CHUNK_ENTRY = struct.Struct(">I32s")


def binding_message(job_id: str, provider: str, epoch: str, chunks: list[tuple[int, bytes]]) -> bytes:
    """What the requester signs (SM2) for one lookup: job, provider, key epoch of its filter,
    the number of blinded points and, per chunk of the blinded stream, its point count and the
    SHA-256 of its bytes. The provider evaluates only chunks listed here, in this order."""
    check_params(epoch, 8, 0)
    if len(chunks) > MAX_BINDING_CHUNKS:
        raise InvalidInput("too many chunks in one lookup")
    total = sum(n for n, _ in chunks)
    return b"".join([BINDING_CTX, f"{job_id}\x00{provider}\x00{epoch}\x00".encode(),
                     struct.pack(">QI", total, len(chunks)), *(_CHUNK_ENTRY.pack(n, d) for n, d in chunks)])


def parse_binding(message: bytes, job_id: str, provider: str) -> tuple[str, int, list[tuple[int, bytes]]]:
    """``(epoch, total points, [(count, sha256)] per chunk)`` of a binding for this job and
    provider; InvalidInput when it is malformed or names another job or provider."""
    prefix = BINDING_CTX + f"{job_id}\x00{provider}\x00".encode()
    if not message.startswith(prefix):
        raise InvalidInput("the lookup binding names another job or provider")
    rest = message[len(prefix):]
    end = rest.find(b"\x00")
    if end < 0:
        raise InvalidInput("the lookup binding is malformed")
    try:
        epoch = rest[:end].decode("ascii")
        check_params(epoch, 8, 0)
    except (UnicodeDecodeError, InvalidInput):
        raise InvalidInput("the lookup binding is malformed") from None
    body = rest[end + 1:]
    if len(body) < 12:
        raise InvalidInput("the lookup binding is malformed")
    total, n = struct.unpack_from(">QI", body)
    if n > MAX_BINDING_CHUNKS or len(body) != 12 + n * _CHUNK_ENTRY.size:
        raise InvalidInput("the lookup binding is malformed")
    chunks = [_CHUNK_ENTRY.unpack_from(body, 12 + i * _CHUNK_ENTRY.size) for i in range(n)]
    if sum(c for c, _ in chunks) != total:
        raise InvalidInput("the lookup binding's point count does not add up")
    return epoch, total, chunks
