"""KKRT16 PSI benchmark: sender and receiver in two processes over a local socket pair.

    .venv/bin/python scripts/bench_psi_kkrt.py [N ...]     (default 100000 1000000)

Prints, per N (items per side, half of them common): N / seconds (items per side per second),
each party's stage times, bytes each way and each process's peak RSS. No coordinator, no TLS,
no sealing — the protocol core only.
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import socket
import struct
import sys
import time


def _send(sock, data: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(data)) + data)


def _recv(sock) -> bytes:
    def exact(n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if not k:
                raise EOFError
            got += k
        return bytes(buf)
    return exact(struct.unpack("<Q", exact(8))[0])


def _ids(n: int, offset: int) -> list[str]:
    return [f"ID{offset + i:012d}" for i in range(n)]


def sender(sock, n, out):
    from pc_node.psi.kkrt import KkrtSender
    t0 = time.perf_counter()
    s = KkrtSender(_ids(n, n // 2))
    sent = 0
    for step in (lambda _: s.start(), s.extend, s.masks):
        msg = step(None if step.__name__ == "<lambda>" else _recv(sock))
        _send(sock, msg)
        sent += len(msg)
    out.put(("sender", time.perf_counter() - t0, sent, s.stages,
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def receiver(sock, n, out):
    from pc_node.psi.kkrt import KkrtReceiver
    t0 = time.perf_counter()
    r = KkrtReceiver(_ids(n, 0))
    sent = 0
    for step in (r.respond, r.correct):
        msg = step(_recv(sock))
        _send(sock, msg)
        sent += len(msg)
    got = r.finish(_recv(sock))
    assert len(got) == n - n // 2, len(got)
    out.put(("receiver", time.perf_counter() - t0, sent, r.stages,
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def bench(n: int) -> None:
    ctx = mp.get_context("fork")
    a, b = socket.socketpair()
    q = ctx.Queue()
    procs = [ctx.Process(target=sender, args=(a, n, q)), ctx.Process(target=receiver, args=(b, n, q))]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    res = {r[0]: r for r in (q.get(), q.get())}
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    print(f"n={n:,} per side: wall {wall:.2f} s  → {n / wall:,.0f} items/s per side (exact intersection)")
    for who in ("receiver", "sender"):
        _, secs, sent, stages, rss = res[who]
        st = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
        print(f"  {who:8s} {secs:.2f} s  sent {sent / 1e6:.1f} MB  peak RSS {rss:.0f} MB  stages: {st}")


if __name__ == "__main__":
    from pc_node.psi import kkrt  # noqa: F401  (compile/load the numba cache once, outside the timing)
    for n in [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]:
        bench(n)
