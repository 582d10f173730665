#!/usr/bin/env python3
"""Benchmark of the homomorphic eligibility pipeline (rows layout).

K providers each encrypt one value per subject (income in cents), the
coordinator sums per household across members and providers and blinds one
"S < T" comparison per household, the requester decrypts the verdicts.
Every message goes through its byte form, as it would over gRPC.

    python scripts/bench_agg.py --subjects 100000 --providers 4 --backend bfv

The last line is machine-readable:
    agg backend=… subjects=… providers=… encrypt_s=… aggregate_s=… decrypt_s=… total_s=…
(total_s includes key generation and public-context transfer.)
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pc_node.secure_agg import (  # noqa: E402
    check_no_overflow,
    decrypt_comparisons,
    get_backend,
    group_sum,
    less_than,
)

MAX_INPUT_CENTS = 1_000_000  # per subject and provider: 10,000 yuan


def households(subjects: int, rng: random.Random) -> list[int]:
    """Household sizes 1..6 summing to ``subjects``, largest first (rows layout)."""
    sizes: list[int] = []
    left = subjects
    while left:
        s = min(rng.randint(1, 6), left)
        sizes.append(s)
        left -= s
    return sorted(sizes, reverse=True)


def row_widths(sizes: list[int]) -> list[int]:
    return [sum(1 for s in sizes if s > j) for j in range(max(sizes))]


def enc_rates(backend: str) -> None:
    """Naive phe vs our fast path, single core (Paillier only)."""
    if backend != "paillier":
        return
    from phe import paillier as phe_paillier

    be = get_backend("paillier")
    pub, _ = be.generate_keypair(key_bits=2048)
    phe_pub = phe_paillier.PaillierPublicKey(pub.n)
    t = time.perf_counter()
    for i in range(100):
        phe_pub.encrypt(i)
    naive = 100 / (time.perf_counter() - t)
    pub.table()
    t = time.perf_counter()
    be.encrypt(pub, list(range(2000)), workers=1)
    fast = 2000 / (time.perf_counter() - t)
    print(f"enc_rate paillier-2048 naive_phe={naive:.0f}/s fast_fixed_base={fast:.0f}/s (1 core)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--providers", type=int, default=4)
    ap.add_argument("--backend", choices=["bfv", "paillier"], default="bfv")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--key-bits", type=int, default=2048, help="Paillier only")
    ap.add_argument("--enc-rate", action="store_true", help="also measure Paillier naive vs fast enc/s")
    args = ap.parse_args()
    if args.enc_rate:
        enc_rates(args.backend)

    rng = random.Random(args.seed)
    sizes = households(args.subjects, rng)
    widths = row_widths(sizes)
    be = get_backend(args.backend)
    # values[p][j][g]: provider p's value for member j of household g
    values = [[[rng.randint(0, MAX_INPUT_CENTS) for _ in range(w)] for w in widths] for _ in range(args.providers)]
    per_member_line = args.providers * MAX_INPUT_CENTS // 2
    thresholds = [per_member_line * s for s in sizes]
    print(f"layout households={len(sizes)} rows={len(widths)} widths={widths}")

    t0 = time.perf_counter()
    params = {"key_bits": args.key_bits} if args.backend == "paillier" else {}
    pub, sec = be.generate_keypair(**params)
    pub_bytes = pub.serialize()
    keygen_s = time.perf_counter() - t0
    print(f"stage keygen_s={keygen_s:.3f} public_context_bytes={len(pub_bytes)}")

    # providers
    t = time.perf_counter()
    uploads: list[bytes] = []
    for p in range(args.providers):
        ppub = be.load_public(pub_bytes)
        for row in values[p]:
            uploads.append(be.encrypt(ppub, row).serialize())
    encrypt_s = time.perf_counter() - t
    print(f"stage encrypt_s={encrypt_s:.3f} ciphertext_bytes={sum(map(len, uploads))}")

    # coordinator
    t = time.perf_counter()
    cpub = be.load_public(pub_bytes)
    rows = [be.load_ciphertext(cpub, u) for u in uploads]
    sums = group_sum(cpub, rows)
    t_sum = time.perf_counter() - t
    sum_bound = check_no_overflow(MAX_INPUT_CENTS, args.providers * max(sizes), cpub)
    value_bound = max(thresholds) + sum_bound
    blinded = less_than(cpub, sums, thresholds, value_bound).serialize()
    aggregate_s = time.perf_counter() - t
    print(f"stage aggregate_s={aggregate_s:.3f} (load+sum {t_sum:.3f}, blind {aggregate_s - t_sum:.3f})")

    # requester
    t = time.perf_counter()
    verdict = decrypt_comparisons(sec, be.load_ciphertext(pub, blinded))
    decrypt_s = time.perf_counter() - t
    print(f"stage decrypt_s={decrypt_s:.3f}")
    total_s = time.perf_counter() - t0

    truth = [
        sum(values[p][j][g] for p in range(args.providers) for j in range(s)) < thr
        for g, (s, thr) in enumerate(zip(sizes, thresholds))
    ]
    wrong = sum(1 for a, b in zip(verdict, truth) if bool(a) != b)
    print(f"check households={len(sizes)} eligible={sum(truth)} wrong_verdicts={wrong}")
    if wrong:
        sys.exit("verdicts disagree with the plaintext computation")
    print(
        f"agg backend={args.backend} subjects={args.subjects} providers={args.providers} "
        f"encrypt_s={encrypt_s:.2f} aggregate_s={aggregate_s:.2f} decrypt_s={decrypt_s:.2f} total_s={total_s:.2f}"
    )


if __name__ == "__main__":
    main()
