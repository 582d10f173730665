"""The two cryptographic profiles of KKRT16 PSI: one protocol, two sets of primitives.

| role | ``aes`` (default) | ``gm`` (national, ``pc psi --crypto gm``) |
|---|---|---|
| identifier hash (16 bytes) | BLAKE3 keyed | HMAC-SM3, truncated |
| cuckoo bins (3 × 64 bits) | BLAKE3 keyed of the item hash | HMAC-SM3 of the item hash |
| PRG of the 512 OT-extension streams | AES-128-CTR | SM4-CTR |
| pseudo-random code C(x), 4 keys | AES-128 | SM4 |
| OPRF output (the mask) | BLAKE3 keyed, truncated | HMAC-SM3, truncated |
| keys derived from job, seeds, transcript | BLAKE3 derive-key | HMAC-SM3 |

Both sides take the profile from the signed job spec (``crypto``), so they cannot disagree. In
both, the 128 Chou–Orlandi base OTs and their IKNP extension to 512 (``pc_common.ot``:
edwards25519, AES) and the sender's local randomness (fillers, list orders: AES-CTR from fresh
seeds) are the same. SM4 runs on the AES-NI kernels of ``pc_common.sm4_aesni`` where the CPU has
them (OpenSSL otherwise), HMAC-SM3 on the bulk kernel of ``pc_common.sm3_bulk`` — each tested
against OpenSSL. Measured speeds are in docs/psi.md.
"""
from __future__ import annotations

import hmac

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numba import njit, prange

from pc_common.errors import InvalidInput
from pc_common.gm import hmac_sm3
from pc_common.ot.primitives import kdf
from pc_common.sm3_bulk import MAX_LEN, hmac_sm3_rows

from . import kkrt_kernels as K
from .kkrt_params import CODE_BITS, CODE_BYTES, ITEM_BYTES, derive_key, hash_items

PROFILES = ("aes", "gm")
PARALLEL_GRAIN = K.PARALLEL_GRAIN


def _block_code(algorithm, items: np.ndarray, seed: bytes, label: bytes) -> np.ndarray:
    """C(x) = E_{c1}(x) ‖ … ‖ E_{c4}(x) with the block cipher ``algorithm`` (AES or SM4, the
    latter on the AES-NI kernel where there is one)."""
    from pc_common import sm4_aesni
    n = items.shape[0]
    out = np.empty((n, CODE_BYTES), dtype=np.uint8)
    flat = np.ascontiguousarray(items).reshape(-1)
    buf = np.empty(flat.size + 16, dtype=np.uint8)
    for i in range(CODE_BITS // 128):
        key = kdf(label, seed, bytes([i]))
        if algorithm is algorithms.SM4 and sm4_aesni.available():
            out[:, 16 * i:16 * (i + 1)] = sm4_aesni.ecb_encrypt(sm4_aesni.round_keys(key), flat).reshape(n, 16)
            continue
        Cipher(algorithm(key), modes.ECB()).encryptor().update_into(flat, buf)
        out[:, 16 * i:16 * (i + 1)] = buf[:flat.size].reshape(n, 16)
    return out


class AesProfile:
    """AES and BLAKE3 (the default)."""

    name = "aes"

    def key(self, context: str, material: bytes) -> np.ndarray:
        return derive_key(context, material)

    def hash_items(self, ids, key) -> np.ndarray:
        return hash_items(ids, key)

    def cuckoo_words(self, items: np.ndarray, key) -> np.ndarray:
        rows = np.zeros((items.shape[0], 64), dtype=np.uint8)
        rows[:, :ITEM_BYTES] = items
        return K.blake3_rows(key, rows, np.full(items.shape[0], ITEM_BYTES, dtype=np.int64), 24).view("<u8")

    def code_words(self, items: np.ndarray, seed: bytes) -> np.ndarray:
        return _block_code(algorithms.AES, items, seed, b"pc.psi.kkrt.v1/code")

    def stream(self, seed: bytes):
        """A continuing keystream of ``seed``: ``update_into(zeros, buf)`` as cryptography's."""
        return Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    def receiver_masks(self, key, t, occupied, out_len) -> np.ndarray:
        return K.receiver_masks(key, t, occupied, out_len)

    def sender_masks(self, key, q, u, lo, s, pair_bin, pair_item, pair_out, code, out, out_len) -> None:
        K.sender_masks(key, q, u, lo, s, pair_bin, pair_item, pair_out, code, out, out_len)


class _Sm4Stream:
    """SM4-CTR keystream of one key from counter 0, continuing across calls (the AES-NI kernel,
    or OpenSSL's SM4-CTR where the kernel is not available). The receiver asks 1,024 streams
    for 2 KiB each per batch, so whole kernel steps go straight to the kernel."""

    def __init__(self, key: bytes) -> None:
        from pc_common import sm4_aesni
        self._k = sm4_aesni if sm4_aesni.available() else None
        if self._k is None:
            self._openssl = Cipher(algorithms.SM4(key), modes.CTR(bytes(16))).encryptor()
        else:
            self._rk = sm4_aesni.round_keys(key)
            self._iv = np.zeros(4, dtype=np.uint32)         # nonce 0, counter in the last word
            self._partial = False

    def update_into(self, zeros: np.ndarray, buf: np.ndarray) -> None:
        if self._k is None:
            self._openssl.update_into(zeros, buf)
            return
        if self._partial:
            raise RuntimeError("an SM4 stream cannot continue after a partial block")
        n = zeros.size
        steps, rest = divmod(n, self._k.STEP)
        if steps:
            self._k.ctr_raw(self._rk, self._iv, zeros, buf, steps)
            self._iv[3] += steps * self._k.STEP // 16
        if rest:
            tail = buf[steps * self._k.STEP:n]
            self._k.ctr_xor(self._rk, bytes(12), zeros[:rest], tail, counter=int(self._iv[3]))
            self._iv[3] += rest // 16
            self._partial = bool(rest % 16)


@njit(cache=True, parallel=True, nogil=True)
def _sender_rows(q, u, lo, s, pair_bin, pair_item, code, rows):
    """rows[j] = q_b ⊕ (s ∧ (u_b ⊕ C(y_k))) for pair j (b = pair_bin[j] − lo, k = pair_item[j])."""
    n = pair_bin.shape[0]
    for t in prange((n + PARALLEL_GRAIN - 1) // PARALLEL_GRAIN):
        for j in range(t * PARALLEL_GRAIN, min(n, (t + 1) * PARALLEL_GRAIN)):
            b = pair_bin[j] - lo
            k = pair_item[j]
            for i in range(64):
                rows[j, i] = q[b, i] ^ (s[i] & (u[b, i] ^ code[k, i]))


class GmProfile:
    """SM4 and SM3 (GB/T 32907, GB/T 32905): the national-algorithm profile."""

    name = "gm"

    def key(self, context: str, material: bytes) -> bytes:
        return hmac_sm3(context.encode(), bytes(material))

    def hash_items(self, ids, key: bytes) -> np.ndarray:
        if not all(isinstance(s, (str, bytes)) for s in ids):
            raise InvalidInput("identifiers must be strings")
        data = [s.encode("utf-8") if isinstance(s, str) else s for s in ids]
        out = np.empty((len(data), ITEM_BYTES), dtype=np.uint8)
        lengths = np.fromiter(map(len, data), dtype=np.int64, count=len(data))
        for length in np.unique(lengths):           # the kernel takes rows of one length
            sel = np.nonzero(lengths == length)[0]
            if length <= MAX_LEN:
                rows = np.frombuffer(b"".join(data[i] for i in sel), dtype=np.uint8).reshape(sel.size, int(length))
                out[sel] = hmac_sm3_rows(key, rows)[:, :ITEM_BYTES]
            else:
                for i in sel:
                    out[i] = np.frombuffer(hmac.digest(key, data[i], "sm3")[:ITEM_BYTES], dtype=np.uint8)
        return out

    def cuckoo_words(self, items: np.ndarray, key: bytes) -> np.ndarray:
        return np.ascontiguousarray(hmac_sm3_rows(key, items)[:, :24]).view("<u8")

    def code_words(self, items: np.ndarray, seed: bytes) -> np.ndarray:
        return _block_code(algorithms.SM4, items, seed, b"pc.psi.kkrt.v1/gm/code")

    def stream(self, seed: bytes) -> _Sm4Stream:
        return _Sm4Stream(seed)

    def receiver_masks(self, key: bytes, t, occupied, out_len) -> np.ndarray:
        return np.ascontiguousarray(hmac_sm3_rows(key, t[occupied])[:, :out_len])

    def sender_masks(self, key: bytes, q, u, lo, s, pair_bin, pair_item, pair_out, code, out, out_len) -> None:
        rows = np.empty((pair_bin.shape[0], 64), dtype=np.uint8)
        _sender_rows(q, u, lo, s, pair_bin, pair_item, code, rows)
        out[pair_out] = hmac_sm3_rows(key, rows)[:, :out_len]


def profile(name: str):
    if name == "aes":
        return AesProfile()
    if name == "gm":
        return GmProfile()
    raise InvalidInput("crypto profile must be aes or gm")
