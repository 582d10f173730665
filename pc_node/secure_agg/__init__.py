"""Homomorphic aggregation: backends (Paillier, BFV) and blinding.

Typical flow (eligibility verification)::

    be = get_backend("bfv")
    pub, secret = be.generate_keypair()                 # requester node
    wire_pub = pub.serialize()                          # public part only
    pub_p = be.load_public(wire_pub)                    # provider / coordinator
    rows = [be.encrypt(pub_p, row) for row in rows_of_values]      # provider
    s = group_sum(pub_c, rows_from_all_providers)       # coordinator
    blinded = less_than(pub_c, s, thresholds, value_bound)
    verdict = be.decrypt(secret, blinded) > 0           # requester node: positive <=> S < T

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
from .blinding import (
    Comparison,
    blur_window_bits,
    fold_zero_tests,
    greater_than,
    group_sum,
    less_than,
    random_permutation,
    rho_bits,
    shuffle_comparisons,
    shuffled,
    zero_test,
)

__all__ = [
    "CipherVector",
    "Comparison",
    "HeBackend",
    "PublicContext",
    "SecretContext",
    "available_backends",
    "backend_for",
    "blur_window_bits",
    "fold_zero_tests",
    "get_backend",
    "greater_than",
    "group_sum",
    "less_than",
    "random_permutation",
    "rho_bits",
    "shuffle_comparisons",
    "shuffled",
    "zero_test",
]
