#!/usr/bin/env python3
"""Benchmark: two-party PSI end to end through a real sandbox, against OpenMined PSI.

Builds two datasets of N valid identity numbers with 50 % overlap, brings a sandbox up
(coordinator and two nodes, separate processes, loopback, mutual TLS), runs `Federation.psi`
and checks the result against the plaintext intersection; then runs OpenMined PSI
(`openmined-psi`, P-256, reveal_intersection, RAW container) on the same sets in this process.

items/s counts the items of both sides: 2·N / wall-clock seconds (the convention under which
OpenMined PSI does ~4k items/s here). The ECDH limit is 4·N X25519 multiplications spread over
all cores at the fastest backend's measured rate, i.e. rate·cores/2 items/s. Last line:

    psi n=N ours_items_per_s=… openmined_items_per_s=… ratio=… ecdh_limit_fraction=…
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time


def x25519_rates(n: int = 20000) -> tuple[float, float, str, int]:
    """(raw one-core rate, batch rate over all cores, backend name, cores)."""
    from nacl._sodium import ffi, lib
    from pc_node.psi import best_backend, worker_count
    backend = best_backend()
    pts = backend.hash_to_points([f"B{i:017d}" for i in range(n)], b"bench")
    key = bytes(range(32))
    out, k = ffi.new("unsigned char[32]"), ffi.new("unsigned char[32]", key)
    p0 = ffi.new("unsigned char[32]", pts[0].tobytes())
    t = time.perf_counter()
    for _ in range(n):
        lib.crypto_scalarmult(out, k, p0)
    raw = n / (time.perf_counter() - t)
    t = time.perf_counter()
    backend.scalarmult_batch(key, pts)
    batch = n / (time.perf_counter() - t)
    return raw, batch, backend.name, worker_count()


def write_sets(root: pathlib.Path, n: int, seed: int) -> tuple[set[str], set[str]]:
    from pc_devkit.synth_city import random_identity_numbers
    pool = list(dict.fromkeys(random_identity_numbers(int(n * 1.6) + 1000, seed)))
    if len(pool) < n + n // 2:
        raise SystemExit("not enough distinct identifiers; use another seed")
    xs, ys = pool[:n], pool[n // 2:n + n // 2]
    for agency, name, ids in (("civil_affairs", "applicants", xs), ("public_security", "vehicles", ys)):
        (root / agency).mkdir(parents=True, exist_ok=True)
        with open(root / agency / f"{name}.csv", "w", encoding="utf-8") as fh:
            fh.write("id_number\n")
            fh.writelines(f"{i}\n" for i in ids)
    return set(xs), set(ys)


def openmined(xs: list[str], ys: list[str]) -> float | None:
    try:
        import private_set_intersection.python as psi
    except ImportError:
        return None
    client = psi.client.CreateWithNewKey(True)
    server = psi.server.CreateWithNewKey(True)
    t = time.perf_counter()
    setup = server.CreateSetupMessage(1e-9, len(xs), ys, psi.DataStructure.RAW)
    response = server.ProcessRequest(client.CreateRequest(xs))
    inter = client.GetIntersection(setup, response)
    wall = time.perf_counter() - t
    assert len(inter) == len(set(xs) & set(ys))
    return (len(xs) + len(ys)) / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="items per side")
    ap.add_argument("--dir", default="bench-psi")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--skip-openmined", action="store_true")
    args = ap.parse_args()

    from pc_client.sandbox import Sandbox
    raw, batch, backend, cores = x25519_rates()
    print(f"X25519 scalar multiplications/s: raw libsodium 1 core {raw:,.0f}; {backend} batch API on "
          f"{cores} core(s) {batch:,.0f}")
    limit_items = batch / 2        # 4·N multiplications for 2·N items
    work = pathlib.Path(args.dir).resolve()
    city = work / f"sets-{args.n}-{args.seed}"
    sb = Sandbox(city)
    if sb.running():
        sb.down(quiet=True)
    shutil.rmtree(city, ignore_errors=True)
    xs, ys = write_sets(city, args.n, args.seed)
    truth = xs & ys
    t = time.perf_counter()
    sb.up(log=lambda m: None, timeout=1800)
    print(f"sandbox up with both datasets imported: {time.perf_counter() - t:.1f} s", flush=True)
    try:
        out = work / "psi_out.csv"
        with sb.federation("analyst@civil_affairs") as fed:
            t = time.perf_counter()
            res = fed.psi(["civil_affairs.applicants", "public_security.vehicles"], out=out)
            wall = time.perf_counter() - t
        got = set(out.read_text().split()[1:])
        print(f"ours: {wall:.2f} s for 2 x {args.n:,} items; intersection {len(got):,} "
              f"({'exact' if got == truth else 'MISMATCH'}); coordinator job time {res.summary.get('total_s')} s")
    finally:
        sb.down(quiet=True)
    ours = 2 * args.n / wall
    om = None if args.skip_openmined else openmined(sorted(xs), sorted(ys))
    if om is not None:
        print(f"OpenMined PSI: {om:,.0f} items/s")
    ratio = ours / om if om else float("nan")
    print(f"psi n={args.n} ours_items_per_s={ours:.0f} openmined_items_per_s={om or float('nan'):.0f} "
          f"ratio={ratio:.2f} ecdh_limit_fraction={ours / limit_items:.2f}")
    return 0 if got == truth else 1


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
