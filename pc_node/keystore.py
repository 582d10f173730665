"""Node master key, data keys and field encryption for data at rest.

Key hierarchy::

    master key (16 bytes, SM4)   env PC_MASTER_KEY (hex) or a 0600 key file, created on first use
      └─ wraps data keys (32 bytes each, one per dataset), SM4-GCM, bound to a context (dataset id)
           ├─ field key  = HKDF-SM3(data key, "field")  → SM4-GCM per cell
           └─ index key  = HKDF-SM3(data key, "index")  → HMAC-SM3 blind index of identifiers

A blind index is deterministic: equal identifiers give equal indexes under one data key, which
is what makes lookups possible, and which reveals equality (not values) to whoever reads the store.
"""
from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput
from pc_common.gm import (
    SM4_KEY_SIZE,
    sm4_gcm_decrypt,
    sm4_gcm_decrypt_many,
    sm4_gcm_encrypt,
    sm4_gcm_encrypt_many,
)

__all__ = [
    "MASTER_KEY_ENV",
    "MASTER_KEY_SIZE",
    "DATA_KEY_SIZE",
    "load_master_key",
    "generate_data_key",
    "wrap_data_key",
    "unwrap_data_key",
    "rewrap_data_key",
    "FieldCipher",
]

MASTER_KEY_ENV = "PC_MASTER_KEY"
MASTER_KEY_SIZE = SM4_KEY_SIZE
DATA_KEY_SIZE = 32
_WRAP_AAD = b"pc-data-key-wrap-v1\x00"
_TAG_BYTES, _TAG_STR = b"\x00", b"\x01"


# --------------------------------------------------------------------------- master key
def _parse_master_hex(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise CryptoError(f"master key from {source} is not hex") from None
    if len(key) != MASTER_KEY_SIZE:
        raise CryptoError(f"master key from {source} must be {MASTER_KEY_SIZE} bytes (32 hex digits)")
    return key


def _check_key_file(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FailedPrecondition(f"master key file {path} is not a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise FailedPrecondition(
            f"master key file {path} must be owned by the user running the node; refusing to use it"
        )
    if st.st_mode & 0o077:
        raise FailedPrecondition(
            f"master key file {path} is readable or writable by other users; "
            f"run 'chmod 600 {path}' and start again"
        )


def load_master_key(path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None) -> bytes:
    """Return the node's master key.

    ``PC_MASTER_KEY`` (hex) wins when set. Otherwise ``path`` is read; it must be a regular file
    owned by the current user with no group/other permissions (0600 or 0400). If it does not
    exist it is created with mode 0600 holding a fresh random key. Symlinks are refused.
    """
    env = os.environ if env is None else env
    value = env.get(MASTER_KEY_ENV)
    if value:
        return _parse_master_hex(value, f"${MASTER_KEY_ENV}")
    if path is None:
        raise FailedPrecondition(f"no master key: set ${MASTER_KEY_ENV} or configure a key file")
    path = Path(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nofollow)
    except FileNotFoundError:
        return _create_key_file(path)
    except OSError:
        raise FailedPrecondition(f"master key file {path} cannot be opened (symlinks are refused)") from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        _check_key_file(os.fstat(f.fileno()), path)
        return _parse_master_hex(f.read(), "the key file")


def _create_key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(MASTER_KEY_SIZE)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_master_key(path, env={})
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits, never added; be explicit
        os.write(fd, (key.hex() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


# --------------------------------------------------------------------------- data keys
def _check_master(master_key: bytes) -> None:
    if len(master_key) != MASTER_KEY_SIZE:
        raise CryptoError("master key must be 16 bytes")


def generate_data_key() -> bytes:
    return secrets.token_bytes(DATA_KEY_SIZE)


def wrap_data_key(master_key: bytes, data_key: bytes, context: bytes = b"") -> bytes:
    """Encrypt ``data_key`` under the master key, bound to ``context`` (e.g. the dataset id)."""
    _check_master(master_key)
    if len(data_key) != DATA_KEY_SIZE:
        raise CryptoError("data key must be 32 bytes")
    return sm4_gcm_encrypt(master_key, data_key, _WRAP_AAD + context)


def unwrap_data_key(master_key: bytes, wrapped: bytes, context: bytes = b"") -> bytes:
    """Inverse of :func:`wrap_data_key`; wrong master key, context or tampering → IntegrityError."""
    _check_master(master_key)
    key = sm4_gcm_decrypt(master_key, wrapped, _WRAP_AAD + context)
    if len(key) != DATA_KEY_SIZE:
        raise CryptoError("unwrapped data key has the wrong size")
    return key


def rewrap_data_key(old_master: bytes, new_master: bytes, wrapped: bytes, context: bytes = b"") -> bytes:
    """Re-encrypt a wrapped data key under a new master key (master key rotation)."""
    return wrap_data_key(new_master, unwrap_data_key(old_master, wrapped, context), context)


# --------------------------------------------------------------------------- fields
def _subkey(data_key: bytes, label: bytes, length: int) -> bytes:
    return HKDF(hashes.SM3(), length, salt=None, info=b"pc-data-key-v1/" + label).derive(data_key)


def _encode(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return _TAG_STR + value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _TAG_BYTES + bytes(value)
    raise InvalidInput("an encrypted field must be text or bytes")


def _decode(raw: bytes) -> str | bytes:
    tag, body = raw[:1], raw[1:]
    if tag == _TAG_STR:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise CryptoError("decrypted field is not valid text") from None
    if tag == _TAG_BYTES:
        return body
    raise CryptoError("decrypted field has an unknown type")


class FieldCipher:
    """Encrypts cells and computes blind indexes under one dataset's data key.

    Pass a per-cell ``aad`` such as ``b"dataset/column/row-key"`` so that a ciphertext moved to
    another cell fails to decrypt.
    """

    __slots__ = ("_enc_key", "_index_mac", "_index_key")

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_SIZE:
            raise CryptoError("data key must be 32 bytes")
        self._enc_key = _subkey(data_key, b"field-sm4", SM4_KEY_SIZE)
        self._index_key = _subkey(data_key, b"blind-index-hmac-sm3", 32)
        self._index_mac = _hmac.HMAC(self._index_key, hashes.SM3())

    @classmethod
    def from_wrapped(cls, master_key: bytes, wrapped: bytes, context: bytes = b"") -> "FieldCipher":
        return cls(unwrap_data_key(master_key, wrapped, context))

    def encrypt_field(self, value: str | bytes, aad: bytes = b"") -> bytes:
        return sm4_gcm_encrypt(self._enc_key, _encode(value), aad)

    def decrypt_field(self, blob: bytes, aad: bytes = b"") -> str | bytes:
        """Returns the value with its original type (str or bytes)."""
        return _decode(sm4_gcm_decrypt(self._enc_key, blob, aad))

    def encrypt_fields(self, values: Sequence[str | bytes], aads: Sequence[bytes] | bytes = b"") -> list[bytes]:
        return sm4_gcm_encrypt_many(self._enc_key, [_encode(v) for v in values], aads)

    def decrypt_fields(self, blobs: Sequence[bytes], aads: Sequence[bytes] | bytes = b"") -> list[str | bytes]:
        return [_decode(raw) for raw in sm4_gcm_decrypt_many(self._enc_key, blobs, aads)]

    def blind_index(self, normalised_identifier: str | bytes) -> bytes:
        """HMAC-SM3 (32 bytes) of an already normalised identifier (see ``idnum.normalise``)."""
        data = (
            normalised_identifier.encode("utf-8")
            if isinstance(normalised_identifier, str)
            else bytes(normalised_identifier)
        )
        m = self._index_mac.copy()
        m.update(data)
        return m.finalize()

    def blind_indexes(self, normalised_identifiers: Sequence[str | bytes]) -> list[bytes]:
        return [self.blind_index(v) for v in normalised_identifiers]

    def blind_index_rows(self, identifiers):
        """The blind indexes of many identifiers at once: ``identifiers`` an (n, L) uint8 array
        of their bytes (L ≤ 55; identity numbers: 18) → (n, 32) uint8, equal row by row to
        :meth:`blind_index` (numba HMAC-SM3 kernel, ``pc_common.sm3_bulk``)."""
        from pc_common.sm3_bulk import hmac_sm3_rows
        return hmac_sm3_rows(self._index_key, identifiers)

    def __repr__(self) -> str:
        return "FieldCipher(<keys hidden>)"

    def __reduce__(self):
        raise TypeError("FieldCipher cannot be pickled")
