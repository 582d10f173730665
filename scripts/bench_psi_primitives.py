#!/usr/bin/env python3
"""Benchmark the PSI primitives and protocol cores in process (no network).

Prints: raw X25519 scalar multiplications/s (one libsodium call at a time, the ceiling),
the batch API per backend on 1 core and on all cores, hash-to-curve rate, two-party PSI
items/s for n per side, PSI-CA, the lookup offline and online times, and OpenMined PSI
(P-256, ``reveal_intersection=True``, RAW) on the same n for reference.

    .venv/bin/python scripts/bench_psi_primitives.py                 # n = 100,000
    .venv/bin/python scripts/bench_psi_primitives.py --quick         # n = 10,000, smoke test
    .venv/bin/python scripts/bench_psi_primitives.py --lookup-n 1000000

Timings on a shared machine are noisy; CPU-time rates are printed next to wall-clock rates.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from pc_node.psi import (
    LookupProvider,
    LookupRequester,
    backend_status,
    get_backend,
    intersect,
    worker_count,
)
from pc_node.psi.x25519 import hash_to_x25519


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def workers(n: int | None):
    old = os.environ.get("PC_PSI_WORKERS")
    if n is None:
        os.environ.pop("PC_PSI_WORKERS", None)
    else:
        os.environ["PC_PSI_WORKERS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PC_PSI_WORKERS", None)
        else:
            os.environ["PC_PSI_WORKERS"] = old


def timed(fn, repeat: int = 3):
    """Best wall time and the CPU time of that run (process-wide, all threads)."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best[0]:
            best = (wall, cpu)
    return best


def line(label: str, n: int, wall: float, cpu: float | None = None) -> None:
    extra = f"   ({n / cpu:>10,.0f}/CPU-s)" if cpu else ""
    print(f"  {label:<44} {n / wall:>10,.0f}/s   {wall * 1e3:>9.1f} ms{extra}")


def bench_primitives(n: int) -> float:
    from nacl._sodium import ffi, lib

    print(f"\n== X25519 scalar multiplication ({n:,} points, {worker_count()} cores) ==")
    pts = hash_to_x25519([f"BENCH{i:012d}" for i in range(n)], b"bench")
    key = bytes(range(32))
    out = ffi.new("unsigned char[32]")
    p0 = ffi.new("unsigned char[32]", pts[0].tobytes())
    k = ffi.new("unsigned char[32]", key)

    def raw():
        f = lib.crypto_scalarmult
        for _ in range(n):
            f(out, k, p0)

    wall, cpu = timed(raw)
    raw_rate = n / cpu
    line("raw libsodium, one call at a time (1 core)", n, wall, cpu)
    for name, (curve, reason) in backend_status().items():
        if curve != "x25519":
            continue
        if reason:
            print(f"  {name:<44} not usable: {reason}")
            continue
        be = get_backend(name)
        with workers(1):
            w1, c1 = timed(lambda be=be: be.scalarmult_batch(key, pts))
        line(f"{name} batch API, 1 core", n, w1, c1)
        print(f"  {'':<44} per-core efficiency vs raw: {(n / c1) / raw_rate:.2f} (CPU time)")
        with workers(None):
            wa, ca = timed(lambda be=be: be.scalarmult_batch(key, pts))
        line(f"{name} batch API, {worker_count()} cores", n, wa, ca)
        print(f"  {'':<44} speed-up over 1 core: {w1 / wa:.2f}x (wall)")
    print("\n== hash to curve (SM3 → Elligator 2 → u) ==")
    ids = [f"BENCH{i:012d}" for i in range(n)]
    with workers(1):
        w1, c1 = timed(lambda: hash_to_x25519(ids, b"bench"), 2)
    line("hash_to_points, 1 core", n, w1, c1)
    wa, ca = timed(lambda: hash_to_x25519(ids, b"bench"), 2)
    line(f"hash_to_points, {worker_count()} cores", n, wa, ca)
    for name, (curve, reason) in backend_status().items():
        if curve == "sm2" and reason is None:
            be = get_backend(name)
            m = max(200, n // 50)
            sp = be.hash_to_points(ids[:m], b"bench")
            sk = be.random_scalar()
            w, c = timed(lambda be=be, sk=sk, sp=sp: be.scalarmult_batch(sk, sp), 1)
            line(f"SM2 {name} batch API, {worker_count()} cores", m, w, c)
            w, c = timed(lambda be=be, m=m: be.hash_to_points(ids[:m], b"bench"), 1)
            line("SM2 hash_to_points (try-and-increment)", m, w, c)
        elif curve == "sm2":
            print(f"  SM2 {name:<40} not usable: {reason}")
    return raw_rate


def bench_two_party(n: int) -> None:
    print(f"\n== two-party ECDH-PSI in process, n = {n:,} per side, 50% overlap ==")
    xs = [f"1101{i:014d}" for i in range(n)]
    ys = [f"1101{i:014d}" for i in range(n // 2, n + n // 2)]
    t0, c0 = time.perf_counter(), time.process_time()
    res = intersect(xs, ys)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert res.cardinality == n // 2
    print(f"  PSI:    {wall:7.2f} s wall, {cpu:7.2f} s CPU  → {2 * n / wall:,.0f} items/s "
          f"(both sides' items), peak RSS {rss_mb():,.0f} MB")
    t0 = time.perf_counter()
    res = intersect(xs, ys, cardinality_only=True)
    wall = time.perf_counter() - t0
    assert res.cardinality == n // 2
    print(f"  PSI-CA: {wall:7.2f} s wall → {2 * n / wall:,.0f} items/s")


def bench_lookup(n: int, queries: int = 1000) -> None:
    print(f"\n== query-private lookup: {queries:,} identifiers vs {n:,} records ==")
    recs = [f"1101{i:014d}" for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    prov = LookupProvider.build(recs, epoch="bench")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"  offline build:   {wall:7.2f} s wall, {cpu:7.2f} s CPU ({n / wall:,.0f} records/s; "
          f"1,000,000 records ≈ {1e6 / n * wall:,.0f} s)")
    snap = prov.snapshot()
    print(f"  filter:          {len(snap) / 1e6:7.2f} MB ({len(snap) / max(n, 1):.1f} bytes/record)")
    t0 = time.perf_counter()
    req = LookupRequester(snap)
    print(f"  load filter:     {(time.perf_counter() - t0) * 1e3:7.1f} ms")
    ask = recs[: queries // 2] + [f"X{i}" for i in range(queries - queries // 2)]
    t0 = time.perf_counter()
    q = req.query(ask)
    t1 = time.perf_counter()
    answer = prov.evaluate(q.blinded())
    t2 = time.perf_counter()
    res = q.finish(answer)
    t3 = time.perf_counter()
    assert len(res.members) == queries // 2
    print(f"  online total:    {(t3 - t0) * 1e3:7.1f} ms  (requester blind {1e3 * (t1 - t0):.0f} ms, "
          f"provider evaluate {1e3 * (t2 - t1):.0f} ms, unblind+match {1e3 * (t3 - t2):.0f} ms)")
    labelled_n = min(n, 20000)
    t0 = time.perf_counter()
    lp = LookupProvider.build(labels={r: b"vehicles=1" for r in recs[:labelled_n]}, label_size=16, epoch="bench")
    wall = time.perf_counter() - t0
    lreq = LookupRequester(lp.snapshot())
    t0 = time.perf_counter()
    q = lreq.query(ask)
    res = q.finish(lp.evaluate(q.blinded()))
    print(f"  labelled:        build {labelled_n:,} rows {wall:.2f} s; online {1e3 * (time.perf_counter() - t0):.0f} ms; "
          f"filter {len(lp.snapshot()) / labelled_n:.0f} bytes/record")


def bench_openmined(n: int) -> None:
    print(f"\n== OpenMined PSI (P-256, reveal_intersection, RAW), n = {n:,} per side ==")
    try:
        import private_set_intersection.python as psi
    except ImportError:
        print("  not installed (pip install openmined-psi)")
        return
    xs = [f"1101{i:014d}" for i in range(n)]
    ys = [f"1101{i:014d}" for i in range(n // 2, n + n // 2)]
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    t0 = time.perf_counter()
    setup = server.CreateSetupMessage(1e-9, n, ys, psi.DataStructure.RAW)
    request = client.CreateRequest(xs)
    response = server.ProcessRequest(request)
    inter = client.GetIntersection(setup, response)
    wall = time.perf_counter() - t0
    assert len(inter) == n // 2
    print(f"  PSI:    {wall:7.2f} s wall → {2 * n / wall:,.0f} items/s (single-threaded C++)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="items per side for PSI")
    ap.add_argument("--prim-n", type=int, default=20_000, help="points for the primitive rates")
    ap.add_argument("--lookup-n", type=int, default=100_000, help="provider records for the lookup")
    ap.add_argument("--openmined-n", type=int, default=None, help="items per side for OpenMined (default --n)")
    ap.add_argument("--skip-openmined", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.prim_n, args.lookup_n = 10_000, 4_000, 10_000
    print(f"PSI benchmark: {worker_count()} worker threads, python {sys.version.split()[0]}, "
          f"numpy {np.__version__}")
    bench_primitives(args.prim_n)
    bench_two_party(args.n)
    bench_lookup(args.lookup_n)
    if not args.skip_openmined:
        bench_openmined(args.openmined_n or args.n)
    print(f"\npeak RSS {rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
