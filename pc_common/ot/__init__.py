"""Oblivious transfer shared by two protocol cores: the garbled-circuit comparison
(``pc_node.secure_agg.gc``) and KKRT16 PSI (``pc_node.psi.kkrt``).

Both cores may import only ``pc_common`` and themselves (tests/unit/test_architecture.py),
so the IKNP extension over Chou–Orlandi base OTs (:mod:`.iknp`) and its symmetric
primitives (:mod:`.primitives`) live here; ``pc_node.secure_agg.gc.ot`` and
``.primitives`` re-export them unchanged (same wire format, same key-derivation labels).
"""
from .iknp import OtReceiver, OtSender
from .primitives import SessionStateError

__all__ = ["OtReceiver", "OtSender", "SessionStateError"]
