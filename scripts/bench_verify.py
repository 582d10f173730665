#!/usr/bin/env python3
"""Benchmark: a full eligibility verification through a real sandbox.

Generates a synthetic city of N applicant households, pads five provider datasets
(vehicles, properties, pensions, wages, businesses) with other residents up to
--provider-rows records each (default 1,000,000), brings a sandbox up (coordinator and
six nodes on loopback with mutual TLS, each a separate process), and runs the allowance
rule extended with a fifth provider ("no active business") through `Federation.verify`.
Verdicts are checked against the plaintext ground truth. Prints per-stage times, then

    verify households=N subjects=… providers=5 total_s=…

total_s is the client's wall clock: upload of subjects, job, and fetching the results file.
Import time is reported separately (it is a one-off cost of loading the datasets).
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import shutil
import sys
import time


PADDED = {"public_security/vehicles.csv": ("car", "truck", "motorcycle"),
          "housing/properties.csv": None, "hrss/pensions.csv": None, "tax/wages.csv": None,
          "market_regulation/businesses.csv": None}

BENCH_RULE = '''# Benchmark rule: 城乡低保 plus a fifth provider (market regulation).
id = "dibao_bench"
title = "Minimum living allowance (benchmark, five providers)"
purpose = "social_assistance.eligibility"
requester = "civil_affairs"
subject_column = "id_number"
group_column = "household_id"
reveal = "verdict"

[[criteria]]
name = "no_car"
type = "none_exists"
source = "public_security.vehicles"
where = "vehicle_type != 'motorcycle'"

[[criteria]]
name = "at_most_one_home"
type = "count_at_most"
source = "housing.properties"
where = "usage = 'residential'"
max = 1

[[criteria]]
name = "no_active_business"
type = "none_exists"
source = "market_regulation.businesses"
where = "status = 'active'"

[[criteria]]
name = "income_below_line"
type = "sum_below"
sources = ["hrss.pensions.monthly_amount", "tax.wages.monthly_income"]
per_member = 1100.00
'''


def filler_ids(n: int, seed: int) -> list[str]:
    """Valid identity numbers of people outside the applicant households."""
    from pc_devkit.synth_city import random_identity_numbers
    return random_identity_numbers(n, seed)


def pad(city: pathlib.Path, rows: int, seed: int) -> dict[str, int]:
    counts = {}
    for i, rel in enumerate(PADDED):
        path = city / rel
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            next(reader)
            have = sum(1 for _ in reader)
        need = max(0, rows - have)
        ids = filler_ids(need, seed + i)
        with open(path, "a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            for j, ident in enumerate(ids):
                if rel.startswith("public_security"):
                    w.writerow([ident, f"新A{j % 100000:05d}", ("car", "truck", "motorcycle")[j % 3], "2015-05-01"])
                elif rel.startswith("housing"):
                    w.writerow([ident, f"新(2010)乌鲁木齐市不动产权第{j:07d}号", "residential", "80.00", "天山区"])
                elif rel.startswith("hrss"):
                    w.writerow([ident, "3000.00"])
                elif rel.startswith("tax"):
                    w.writerow([ident, "新疆某有限公司", "8000.00"])
                else:
                    w.writerow([ident, f"B{j:017d}", "乌鲁木齐某商贸有限公司", "active"])
        counts[rel] = have + need
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--households", type=int, default=10000)
    ap.add_argument("--provider-rows", type=int, default=1_000_000)
    ap.add_argument("--he", choices=("bfv", "paillier"), default="bfv")
    ap.add_argument("--dir", default="bench-verify", help="working folder (reused when the city matches)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    from pc_client.sandbox import Sandbox
    from pc_devkit import ground_truth
    from pc_rules.rules import load_rule
    from pc_devkit.synth_city import generate_city

    work = pathlib.Path(args.dir).resolve()
    city = work / f"city-{args.households}-{args.provider_rows}-{args.seed}"
    sb = Sandbox(city)
    if sb.running():
        sb.down(quiet=True)
    if not (city / ".ready").exists():
        shutil.rmtree(city, ignore_errors=True)
        t = time.perf_counter()
        generate_city(city, households=args.households, seed=args.seed)
        counts = pad(city, args.provider_rows, args.seed)
        (city / "rules" / "dibao_bench.toml").write_text(BENCH_RULE, encoding="utf-8")
        (city / ".ready").write_text("ok")
        print(f"city: generated and padded in {time.perf_counter() - t:.1f} s: "
              + ", ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
        shutil.rmtree(city / ".sandbox", ignore_errors=True)
    t = time.perf_counter()
    sb.up(log=lambda m: print("  " + m, flush=True), timeout=1800)
    print(f"sandbox up (import of all datasets included): {time.perf_counter() - t:.1f} s", flush=True)
    try:
        rule_path = city / "rules" / "dibao_bench.toml"
        subjects = city / "civil_affairs" / "applicants.csv"
        out = work / "bench_results.csv"
        t = time.perf_counter()
        with sb.federation("analyst@civil_affairs") as fed:
            res = fed.verify(rule_path, subjects, out=out, he=args.he)
        total = time.perf_counter() - t
        s = res.summary
        for k in ("admit_s", "prepare_s", "evaluate_s", "aggregate_s", "mask_s", "compare_s", "garble_s", "total_s"):
            print(f"  coordinator {k:12} {s.get(k)}")
        print("  (compare_s: the whole verify.compare step — masked values to the requester, its decryption,"
              " OT, garbling (garble_s of it, at the coordinator), evaluation, results file)")
        print(f"  client wall clock (upload + job + results): {total:.2f} s")
        truth = ground_truth.evaluate(load_rule(rule_path), city, subjects)
        with open(out, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        wrong = sum((r["eligible"] == "true") != g["eligible"] for r, g in zip(rows, truth))
        print(f"  verdicts checked against plaintext ground truth: {len(rows)} rows, {wrong} mismatches")
        print(f"verify households={args.households} subjects={s.get('subjects')} providers={len(s.get('providers', []))}"
              f" mask_s={s.get('mask_s')} compare_s={s.get('compare_s')} total_s={total:.2f}")
        return 0 if wrong == 0 else 1
    finally:
        sb.down(quiet=True)


if __name__ == "__main__":
    sys.exit(main())
