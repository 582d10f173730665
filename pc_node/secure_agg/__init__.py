"""Homomorphic aggregation: backends (Paillier, BFV), the verification's masking plan
(``verdict``) and the garbled-circuit comparison (``gc``).

Typical flow (eligibility verification)::

    be = get_backend("bfv")
    pub, secret = be.generate_keypair()                 # requester node
    wire_pub = pub.serialize()                          # public part only
    pub_p = be.load_public(wire_pub)                    # provider / coordinator
    cvs = [be.encrypt(pub_p, per_slot) for ...]         # providers
    s = be.sum(cvs)                                     # coordinator
    masked, g_in = verdict.mask_bfv(be, s, plan, thresholds, layout)   # plaintext add only
    d = verdict.group_values(be.decrypt(secret, masked), ...)          # requester: masked sums
    # then gc.ComparisonGarbler (coordinator) / gc.ComparisonEvaluator (requester): one bit each

Submodules ``paillier_keys``/``bfv_keys`` (key generation, decryption) are loaded
lazily and only on the key holder's side.
"""
from .backend import (
    CipherVector,
    HeBackend,
    PublicContext,
    SecretContext,
    available_backends,
    backend_for,
    get_backend,
)
__all__ = [
    "CipherVector",
    "HeBackend",
    "PublicContext",
    "SecretContext",
    "available_backends",
    "backend_for",
    "get_backend",
]
