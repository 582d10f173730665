"""1-of-2 oblivious transfer (IKNP03 over Chou–Orlandi base OTs): moved to
:mod:`pc_common.ot.iknp` so that KKRT16 PSI can share it; re-exported here unchanged."""
from pc_common.ot.iknp import (  # noqa: F401
    HEADER_SIZE,
    KAPPA,
    MAX_COUNT,
    POINT,
    OtReceiver,
    OtSender,
    _Decryptor,
    _Encryptor,
    frame,
    message_size,
    open_message,
    row_bytes,
    transpose,
)
