"""The node's compiled kernels, made ready before any job needs them.

* numba kernels (``pc_node.psi.kkrt_kernels``: BLAKE3, cuckoo, OPRF rows, matching;
  ``pc_common.sm3_bulk``: the blind index) compile at first use after installation — 20–40 s on
  this machine — into numba's on-disk cache (``__pycache__``), from which a process loads them
  in well under a second;
* the SM4-GCM kernels (``pc_common.sm4_aesni``) compile from LLVM IR in about half a second
  in every process (nothing cached).

``make install`` runs ``python -m pc_node.kernels``, so even the first job after a fresh
installation finds the numba cache filled; a node process calls :func:`warm_up_in_background`
at start, so no job pays the loading either (a job arriving earlier waits for the same load).
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("pc.node.kernels")


def _kkrt() -> None:
    from pc_node.psi import kkrt
    kkrt.warm_up()


def _blind_index() -> None:
    import numpy as np
    from pc_common.sm3_bulk import hmac_sm3_rows
    hmac_sm3_rows(bytes(32), np.zeros((1, 18), np.uint8))


def _sm4_gcm() -> None:
    from pc_common import sm4_aesni
    if not sm4_aesni.available():
        log.info("SM4-GCM stays on OpenSSL here (no AES-NI/VAES/PCLMULQDQ/AVX2 kernels)")


KERNELS = {"kkrt": _kkrt, "blind_index": _blind_index, "sm4_gcm": _sm4_gcm}


def warm_up() -> dict[str, float]:
    """Load (or compile) every kernel; seconds per kernel. A failure is logged, not raised: a
    job would then load that kernel itself and report its error."""
    took = {}
    for name, load in KERNELS.items():
        t0 = time.perf_counter()
        try:
            load()
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("kernel warm-up failed: %s", name)
        took[name] = round(time.perf_counter() - t0, 3)
    log.info("kernels ready (s): %s", took)
    return took


def warm_up_in_background() -> None:
    threading.Thread(target=warm_up, name="kernel-warm-up", daemon=True).start()


if __name__ == "__main__":
    print("kernels ready (s):", warm_up())
