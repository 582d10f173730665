"""`pc demo`: the first thing a new user runs.

Generates a synthetic city, brings a sandbox up on loopback (coordinator and one node per
agency, mutual TLS), runs the minimum living allowance rule over the applicants, and
prints verdicts, timing and the leakage report.
"""
from __future__ import annotations

import csv
import itertools
import json
import pathlib
import sys
import time

from pc_client.report import print_leakage
from pc_client.sandbox import Sandbox


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def run_demo(workdir: pathlib.Path, households: int = 10000, seed: int = 7, keep: bool = False,
             as_json: bool = False) -> int:
    from pc_devkit.synth_city import generate_city
    workdir = workdir.resolve()
    city = workdir / "city"
    sb = Sandbox(city)
    if sb.running():
        sb.down(quiet=True)
    t0 = time.perf_counter()
    summary = generate_city(city, households=households, seed=seed)
    _say(f"1. Generated a synthetic city in {city}: {summary.households} applicant households, "
         f"{summary.persons} applicants, {summary.residents} residents in the agencies' registries "
         f"({time.perf_counter() - t0:.1f} s)", as_json)
    t1 = time.perf_counter()
    state = sb.up(log=lambda m: None)
    _say(f"2. Sandbox up: coordinator {state['coordinator']}; nodes "
         + ", ".join(f"{a}" for a in state["nodes"]) + f" ({time.perf_counter() - t1:.1f} s)", as_json)
    try:
        with sb.federation() as fed:
            catalog = fed.catalog()
        _say("   Catalog: " + ", ".join(f"{d.agency}.{d.name} ({d.rows} rows)" for d in catalog.datasets), as_json)
        rule = city / "rules" / "dibao.toml"
        subjects = city / "civil_affairs" / "applicants.csv"
        out = workdir / "dibao_results.csv"
        _say(f"3. Verifying {subjects.name} against {rule.name} (城乡低保) ...", as_json)
        t2 = time.perf_counter()
        with sb.federation("analyst@civil_affairs") as fed:
            res = fed.verify(rule, subjects, out=out)
        elapsed = time.perf_counter() - t2
        # Counts from the requester node's job summary; the verdicts themselves are in the results file.
        n_groups, eligible, n_subjects = res.summary["groups"], res.summary["eligible_groups"], res.rows
        doc = {"job_id": res.job_id, "households": n_groups, "eligible_households": eligible,
               "subjects": n_subjects, "seconds": round(elapsed, 2), "results_file": str(out),
               "summary": res.summary, "leakage": res.leakage}
        if as_json:
            print(json.dumps(doc, indent=2, ensure_ascii=False))
        else:
            print(f"   {eligible} of {n_groups} households eligible ({n_subjects} applicants) "
                  f"in {elapsed:.1f} s; job {res.job_id}")
            print("   First verdicts:")
            with open(out, newline="", encoding="utf-8") as fh:
                first = list(itertools.islice(csv.DictReader(fh), 6))
            for r in first:
                masked = r["id_number"][:6] + "********" + r["id_number"][-4:]
                print(f"     {masked}  household {r.get('household_id', '-'):>8}  eligible={r['eligible']}")
            print(f"4. Results file (one row per applicant, input order): {out}")
            print_leakage(res.leakage)
            print(f"5. Audit: pc audit verify --sandbox {city}")
            print(f"   More (with the sandbox running: pc demo --keep, or pc sandbox up {city}):")
            print(f"   pc catalog --sandbox {city}; pc jobs show {res.job_id} --sandbox {city}")
    finally:
        if keep:
            _say(f"The sandbox keeps running; stop it with: pc sandbox down {city}", as_json)
        else:
            sb.down(quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(pathlib.Path("pc-demo")))
