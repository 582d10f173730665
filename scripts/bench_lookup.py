"""Online latency of a query-private lookup as the nodes run it (in process, no transport).

Compares the bare OPRF core with the node steps' added work: the requester's SM2 binding of
its blinded stream (sign), the provider's check (verify, per-chunk SHA-256), answers sealed
chunk by chunk to the requester (digital envelope) and opened there; and the filter's sealing
(offline, once per epoch and requester).

    .venv/bin/python scripts/bench_lookup.py --n 1000000 --queries 1000
"""
from __future__ import annotations

import argparse
import hashlib
import time

from pc_common import gm
from pc_node import envelope
from pc_node.psi import LookupProvider, LookupRequester
from pc_node.psi.lookup_format import binding_message, parse_binding

CHUNK_POINTS = 16384


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="provider records")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    recs = [f"1101{i:014d}" for i in range(args.n)]
    t0 = time.perf_counter()
    prov = LookupProvider.build(recs, epoch="e0.00000000-bench-x")
    print(f"offline build of {args.n:,} records: {time.perf_counter() - t0:.1f} s")
    recipient = envelope.X25519KeyPair.generate()
    sm2 = gm.Sm2PrivateKey.generate()
    sm2_pub = sm2.public_key()
    snap = prov.snapshot()
    t0 = time.perf_counter()
    sealed = envelope.seal(recipient.public, snap, b"pc/lookup/job/snapshot")
    t1 = time.perf_counter()
    req = LookupRequester(envelope.open_envelope(recipient, sealed, b"pc/lookup/job/snapshot"))
    print(f"filter {len(snap) / 1e6:.1f} MB: seal {1e3 * (t1 - t0):.0f} ms, open + load "
          f"{1e3 * (time.perf_counter() - t1):.0f} ms (offline, once per epoch and requester)")
    ask = recs[: args.queries // 2] + [f"X{i}" for i in range(args.queries - args.queries // 2)]
    bare, full = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        q = req.query(ask)
        res = q.finish(prov.evaluate(q.blinded()))
        bare.append(time.perf_counter() - t0)
        assert len(res.members) == args.queries // 2

        t0 = time.perf_counter()
        q = req.query(ask)
        chunks = list(q.blinded_chunks(CHUNK_POINTS))
        t_blind = time.perf_counter()
        msg = binding_message("job", "provider", req.epoch, [(len(c) // 32, hashlib.sha256(c).digest()) for c in chunks])
        sig = sm2.sign(msg)
        t_sign = time.perf_counter()
        sm2_pub.verify(msg, sig)
        _, _, signed = parse_binding(msg, "job", "provider")
        t_verify = time.perf_counter()
        for i, c in enumerate(chunks):
            assert hashlib.sha256(c).digest() == signed[i][1]
            box = envelope.seal(recipient.public, prov.evaluate(c, len(c) // 32), f"pc/lookup/job/answers/{i}".encode())
            q.accept(envelope.open_envelope(recipient, box, f"pc/lookup/job/answers/{i}".encode()), len(c) // 32)
        res = q.finish()
        full.append(time.perf_counter() - t0)
        assert len(res.members) == args.queries // 2
    print(f"online, {args.queries:,} ids vs {args.n:,} records (median of {args.repeat}):")
    print(f"  bare OPRF core:                 {1e3 * sorted(bare)[len(bare) // 2]:.0f} ms")
    print(f"  as the nodes run it:            {1e3 * sorted(full)[len(full) // 2]:.0f} ms "
          f"(blind {1e3 * (t_blind - t0):.0f} ms, SM2 sign {1e3 * (t_sign - t_blind):.0f} ms, "
          f"verify {1e3 * (t_verify - t_sign):.0f} ms)")


if __name__ == "__main__":
    main()
