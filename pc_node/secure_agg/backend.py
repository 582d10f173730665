"""One interface over the homomorphic backends (Paillier, BFV).

The split that matters for safety:

* ``PublicContext`` holds public material only. Its ``serialize()`` is the only way
  key material leaves a node for a peer, and it has nothing secret to write.
* ``SecretContext`` belongs to the key holder (the requester node). Its only
  serialiser is the explicitly named ``serialize_secret()`` for the holder's own
  at-rest storage (to be sealed with SM4-GCM by the caller).
* Key generation, secret loading and decryption live in ``*_keys`` modules that the
  coordinator-side code (``blinding``) never imports; the backend classes reach
  them lazily, only when the key holder calls them.

Backends are stateless singletons obtained with ``get_backend(name)``; every
``CipherVector`` knows the ``PublicContext`` it was made under, so ``add(a, b)``
needs no context argument and mixing keys is refused.
"""
from __future__ import annotations

import importlib
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput, OverflowDetected

IntVector = Sequence[int] | np.ndarray


class PublicContext(ABC):
    """Public key material of one job; safe to send to any peer."""

    backend_name: ClassVar[str]

    @property
    @abstractmethod
    def fingerprint(self) -> bytes:
        """16 bytes naming this key; embedded in every serialized ciphertext."""

    @property
    @abstractmethod
    def plaintext_modulus(self) -> int:
        """Plaintexts live in Z_m for this m (n for Paillier, t for BFV)."""

    @property
    def plaintext_bound(self) -> int:
        """Largest |value| that decrypts to itself (signed values are centred)."""
        return (self.plaintext_modulus - 1) // 2

    @property
    @abstractmethod
    def slots(self) -> int:
        """Values carried by one ciphertext (1 for Paillier, N for BFV)."""

    @property
    @abstractmethod
    def max_plain_mult_depth(self) -> int | None:
        """How many successive plaintext multiplications a ciphertext survives (None: any)."""

    @abstractmethod
    def serialize(self) -> bytes:
        """The public context as bytes for peers. Never contains a secret key."""


class SecretContext(ABC):
    """The key holder's secret key together with its public context."""

    backend_name: ClassVar[str]
    public: PublicContext

    @abstractmethod
    def serialize_secret(self) -> bytes:
        """Secret key bytes for the holder's own sealed storage. Never send to a peer."""

    def __repr__(self) -> str:  # never print key material
        return f"<{type(self).__name__} fingerprint={self.public.fingerprint.hex()}>"


class CipherVector(ABC):
    """An encrypted vector of integers under one public context."""

    public: PublicContext
    length: int
    depth: int  # plaintext multiplications already applied (BFV noise bookkeeping)

    def __len__(self) -> int:
        return self.length

    @abstractmethod
    def serialize(self) -> bytes:
        """Compact bytes carrying the key fingerprint; see ``wire``."""


class HeBackend(ABC):
    """Operations of one scheme. Instances are stateless; use ``get_backend``."""

    name: ClassVar[str]
    # Plaintext bound when it does not depend on the key (BFV); None for Paillier.
    fixed_plaintext_bound: ClassVar[int | None] = None
    #: Whether ``group_sum`` works with public material only (Paillier: one ciphertext per
    #: value). Batched schemes (BFV) would need rotation keys, which we never ship.
    supports_group_sum: ClassVar[bool] = False

    # --- key holder side (lazily imports the *_keys module) -------------------
    #: Module with the key holder's functions (generate_keypair, load_secret, decrypt). It is
    #: imported only when the key holder calls them, so the coordinator never loads it.
    keys_module: ClassVar[str]

    def _keys(self):
        return importlib.import_module(self.keys_module)

    def generate_keypair(self, **params: Any) -> tuple[PublicContext, SecretContext]:
        """Fresh key pair for one job."""
        return self._keys().generate_keypair(**params)

    def load_secret(self, data: bytes) -> SecretContext:
        """Inverse of ``SecretContext.serialize_secret``."""
        return self._keys().load_secret(data)

    def decrypt(self, secret: SecretContext, cv: CipherVector) -> np.ndarray:
        """Signed values centred in (-m/2, m/2]."""
        return self._keys().decrypt(secret, cv)

    # --- anyone -----------------------------------------------------------------
    @abstractmethod
    def load_public(self, data: bytes, **options: Any) -> PublicContext:
        """Parse and validate a peer's public context; ``CryptoError`` if unusable."""

    @abstractmethod
    def encrypt(self, pub: PublicContext, values: IntVector) -> CipherVector:
        """Encrypt signed integers with |v| <= ``pub.plaintext_bound``."""

    @abstractmethod
    def add(self, a: CipherVector, b: CipherVector) -> CipherVector:
        """Element-wise sum; the shorter vector counts as zero-padded."""

    @abstractmethod
    def add_plain(self, cv: CipherVector, values: IntVector | int) -> CipherVector:
        """Element-wise cv + values (plaintext)."""

    @abstractmethod
    def mul_plain(self, cv: CipherVector, values: IntVector | int) -> CipherVector:
        """Element-wise cv * values (plaintext), values taken modulo the plaintext modulus."""

    @abstractmethod
    def rerandomize(self, cv: CipherVector) -> CipherVector:
        """Add a fresh encryption of zero, so the result is unlinkable to its inputs."""

    @abstractmethod
    def load_ciphertext(self, pub: PublicContext, data: bytes) -> CipherVector:
        """Parse bytes from ``CipherVector.serialize``; ``CryptoError`` on wrong key or damage."""

    def group_sum(self, cv: CipherVector, layout: IntVector, n_groups: int) -> CipherVector:
        """Enc(per-group sums) of a per-slot vector: entry g is the sum of ``cv[i]`` over the
        slots i with ``layout[i] == g``. No key needed where ``supports_group_sum``.

        (Not to be confused with ``blinding.group_sum``, which adds whole row vectors.)
        Raises ``FailedPrecondition`` for schemes that cannot do it without the key holder;
        callers ask ``supports_group_sum`` first.
        """
        raise FailedPrecondition(f"the {self.name} backend cannot sum per group without the key holder")

    def sum(self, vectors: Iterable[CipherVector]) -> CipherVector:
        """Sum of one or more vectors (backends may override with a faster loop)."""
        it = iter(vectors)
        try:
            acc = next(it)
        except StopIteration:
            raise InvalidInput("nothing to sum") from None
        for cv in it:
            acc = self.add(acc, cv)
        return acc


# --- helpers shared by backends ------------------------------------------------

def as_int_list(values: IntVector | int, length: int | None = None) -> list[int]:
    """Python ints from a list/array of integers; a scalar is broadcast to ``length``.

    Floats and booleans are refused: silently truncating money or mixing up
    flags with counts is exactly the error this layer must not make.
    """
    if isinstance(values, (bool, np.bool_)):
        raise InvalidInput("plaintext values must be integers")
    if isinstance(values, numbers.Integral):
        if length is None:
            raise InvalidInput("a scalar needs a vector length")
        return [int(values)] * length
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InvalidInput("plaintext vectors must be one-dimensional")
        if values.dtype.kind in "iu":
            out = values.tolist()
        elif values.dtype.kind == "O":
            out = list(values)
        else:
            raise InvalidInput("plaintext values must be integers")
    else:
        out = list(values)
    for i, v in enumerate(out):
        if type(v) is not int:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise InvalidInput("plaintext values must be integers")
            out[i] = int(v)
    if length is not None and len(out) != length:
        raise InvalidInput("plaintext vector length does not match the ciphertext")
    return out


def check_in_plaintext_space(values: list[int], bound: int) -> None:
    """OverflowDetected if some |v| exceeds the plaintext bound (it would wrap)."""
    if values and (max(values) > bound or min(values) < -bound):
        raise OverflowDetected("a value is outside the plaintext space of this key")


def check_layout(layout: IntVector, length: int, n_groups: int) -> list[int]:
    """A slot→group layout as Python ints: one entry per slot, each in [0, n_groups)."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 0:
        raise InvalidInput("the number of groups must be a non-negative integer")
    groups = as_int_list(layout, length)
    if groups and (min(groups) < 0 or max(groups) >= n_groups):
        raise InvalidInput("the layout names a group that does not exist")
    return groups


def check_same_key(a: CipherVector, b: CipherVector) -> None:
    if a.public.fingerprint != b.public.fingerprint:
        raise CryptoError("ciphertexts were encrypted under different keys")


def check_backend(pub: object, expected: type) -> None:
    if not isinstance(pub, expected):
        raise CryptoError("key context does not belong to this backend")


# --- registry --------------------------------------------------------------------

_REGISTRY = {
    "paillier": ("pc_node.secure_agg.paillier", "PaillierBackend"),
    "bfv": ("pc_node.secure_agg.bfv", "BfvBackend"),
}
_INSTANCES: dict[str, HeBackend] = {}


def available_backends() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backend(name: str) -> HeBackend:
    """The backend called ``name`` ("bfv" or "paillier")."""
    if name not in _REGISTRY:
        raise InvalidInput("unknown homomorphic backend")
    inst = _INSTANCES.get(name)
    if inst is None:
        module_name, class_name = _REGISTRY[name]
        inst = getattr(importlib.import_module(module_name), class_name)()
        _INSTANCES[name] = inst
    return inst


def backend_for(obj: PublicContext | SecretContext | CipherVector) -> HeBackend:
    """The backend that made ``obj``."""
    if isinstance(obj, CipherVector):
        obj = obj.public
    if not isinstance(obj, (PublicContext, SecretContext)):
        raise InvalidInput("not a homomorphic key context or ciphertext")
    return get_backend(obj.backend_name)
