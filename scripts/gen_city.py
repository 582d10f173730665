#!/usr/bin/env python3
"""Generate the deterministic synthetic city used by demos, tests and benchmarks.

    python scripts/gen_city.py OUT --households 10000 --seed 1

Writes OUT/<agency>/<dataset>.csv with a <dataset>.toml metadata file beside each,
and copies rules/*.toml to OUT/rules. See pc_devkit/synth_city.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from pc_devkit.synth_city import generate_city
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pc_devkit.synth_city import generate_city


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gen_city.py",
        description="Generate a synthetic city: one folder per agency with CSV datasets, "
                    "column metadata and the shipped rules.",
    )
    parser.add_argument("out", metavar="OUT", help="output directory (created if missing)")
    parser.add_argument("--households", type=int, default=10_000,
                        help="number of applicant households (default 10000; ~2.7 persons each)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    if args.households < 1:
        parser.error("--households must be at least 1")
    summary = generate_city(args.out, households=args.households, seed=args.seed)
    print(f"wrote {summary.out_dir} in {summary.seconds:.1f} s: {summary.households} households, "
          f"{summary.persons} applicants, {summary.residents} residents")
    for dataset, n in summary.rows.items():
        print(f"  {dataset:32s} {n:>9d} rows")
    print("edge cases (household, expected dibao verdict):")
    for name, case in summary.edge_cases.items():
        verdict = "eligible" if case["eligible"] else "not eligible: " + ";".join(case["failed"])
        print(f"  {name:24s} {case['household_id']}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
