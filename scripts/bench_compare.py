#!/usr/bin/env python3
"""Benchmark of the garbled-circuit secure comparison (pc_node.secure_agg.gc).

N households, 3 criteria each, both parties in this one process, every message
passed in its byte form. Two rule shapes:

* ``mod60``: two integer-mode counts (l = 9: "count < 3", "exists" = ¬[x < 1]) and
  one modular-mode 60-bit sum (BFV, t = 1152921504606601217);
* ``int28``: the same two counts and an integer-mode 28-bit sum (Paillier).

The homomorphic part (adding the masks under encryption, decrypting) is not
timed here: the script computes R's masked values d in the clear from the
masks, which is exactly what decryption would give. It prints per stage seconds
(base OT = ``start`` + ``respond``, extension = ``extend``, garble, evaluate),
bytes per direction, households/s and peak memory, and checks every bit.

    python scripts/bench_compare.py --households 100000 --shape both

The last line per shape is machine-readable:
    gc shape=… households=… and_gates=… base_ot_s=… extend_s=… garble_s=… evaluate_s=… total_s=… r_to_c_bytes=… c_to_r_bytes=…
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pc_node.secure_agg.gc import (  # noqa: E402
    CircuitSpec,
    ComparisonEvaluator,
    ComparisonGarbler,
    Test,
    integer_inputs,
    integer_mask,
    modular_inputs,
    modular_mask,
)

T_BFV = 1152921504606601217


def criteria(shape: str, n: int, g: np.random.Generator):
    """(Test, threshold, values, modulus) per criterion."""
    out = [
        (Test(9), 3, g.integers(0, 8, n), None),  # fewer than 3 matching records
        (Test(9, invert=True), 1, g.integers(0, 2, n), None),  # exists
    ]
    if shape == "mod60":
        out.append((Test(60, "modular"), 3_000_000, g.integers(0, 6_000_000, n), T_BFV))
    else:
        out.append((Test(28), 3_000_000, g.integers(0, 6_000_000, n), None))
    return out


def run(shape: str, n: int, reveal: str, workers: int | None, chunk: int | None, seed: int) -> None:
    g = np.random.default_rng(seed)
    crits = criteria(shape, n, g)
    t0 = time.perf_counter()
    g_in, e_in = [], []
    for test, T, xs, t in crits:
        if test.mode == "integer":
            offsets, gi = integer_mask(test.bits, T, n)
            ei = integer_inputs([int(x) + o for x, o in zip(xs, offsets)], test.bits)
        else:
            r, gi = modular_mask(t, T, n)
            ei = modular_inputs((xs.astype(np.uint64) + r) % np.uint64(t), t)
        g_in.append(gi)
        e_in.append(ei)
    masking_s = time.perf_counter() - t0
    spec = CircuitSpec([c[0] for c in crits], reveal)
    cir = spec.circuit

    stages, cpu = {}, {}

    def stage(name, fn, *args):
        t, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - c
        return out

    garbler = stage("setup", lambda: ComparisonGarbler(spec, g_in, workers=workers, chunk=chunk))
    evaluator = stage("setup", lambda: ComparisonEvaluator(spec, e_in, workers=workers, chunk=chunk))
    m1 = stage("base_ot", evaluator.start)
    m2 = stage("base_ot", garbler.respond, m1)
    m3 = stage("extend", evaluator.extend, m2)
    m4 = stage("garble", garbler.garble, m3)
    bits = stage("evaluate", evaluator.evaluate, m4)

    want = np.stack([(xs < T) != test.invert for test, T, xs, _ in crits], axis=1)
    if reveal == "verdict":
        want = want.all(axis=1)
    wrong = int((bits != want).sum())
    r_to_c, c_to_r = len(m1) + len(m3), len(m2) + len(m4)
    total = sum(stages.values())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"shape {shape}: criteria={[(c[0].bits, c[0].mode, c[0].invert) for c in crits]} reveal={reveal}")
    print(f"circuit and_gates={cir.n_and} evaluator_bits={cir.n_evaluator} garbler_bits={cir.n_garbler} "
          f"outputs={cir.n_outputs} (per household)")
    print(f"stage masking_s={masking_s:.3f} (helpers, not part of the protocol timing)")
    for k, v in stages.items():
        print(f"stage {k}_s={v:.3f} cpu_s={cpu[k]:.3f}")
    print(f"bytes r_to_c={r_to_c} ({r_to_c / n:.0f}/household) c_to_r={c_to_r} ({c_to_r / n:.0f}/household)")
    print(f"check households={n} wrong_bits={wrong} passing={int(want.sum())}")
    print(f"rate households_per_s={n / total:,.0f} peak_rss_mb={peak_mb:.0f}")
    print(f"gc shape={shape} households={n} and_gates={cir.n_and} base_ot_s={stages['base_ot']:.3f} "
          f"extend_s={stages['extend']:.3f} garble_s={stages['garble']:.3f} evaluate_s={stages['evaluate']:.3f} "
          f"total_s={total:.3f} r_to_c_bytes={r_to_c} c_to_r_bytes={c_to_r}")
    if wrong:
        raise SystemExit("wrong comparison bits")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--households", type=int, default=100_000)
    ap.add_argument("--shape", choices=["mod60", "int28", "both"], default="both")
    ap.add_argument("--reveal", choices=["verdict", "reasons"], default="verdict")
    ap.add_argument("--workers", type=int, default=None, help="threads per party (default: min(2, cores))")
    ap.add_argument("--chunk", type=int, default=None, help="instances per chunk (multiple of 128)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for shape in (["mod60", "int28"] if a.shape == "both" else [a.shape]):
        run(shape, a.households, a.reveal, a.workers, a.chunk, a.seed)


if __name__ == "__main__":
    main()
