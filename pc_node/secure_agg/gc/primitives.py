"""Symmetric building blocks (TCCR hash, AES-CTR PRG, KDF, session steps): moved to
:mod:`pc_common.ot.primitives` so that KKRT16 PSI can share them; re-exported here unchanged."""
from pc_common.ot.primitives import (  # noqa: F401
    BLOCK,
    U64,
    Rng,
    SessionStateError,
    Steps,
    Tccr,
    as_buffer,
    default_rng,
    draw,
    kdf,
    lsb_mask,
    pack_header,
    parse_header,
    prg,
)
