#!/usr/bin/env python3
"""Benchmark: a federated query in both modes through a real sandbox, against DuckDB on plaintext.

Writes once to a directory (default: a fresh temporary one) a requester dataset of N rows in 100
districts (``civil_affairs.people``) and a provider dataset of N wage rows (``tax.wages``, half of
the identifiers shared), plus ``queries/bench.sql`` so that ``pc sandbox up`` grants what the
query needs. Brings the sandbox up (coordinator and two nodes, separate processes, loopback,
mutual TLS; import time printed apart), runs

    SELECT a.district AS district, COUNT(*) AS n, SUM(w.monthly_income) AS total,
           AVG(w.monthly_income) AS mean
    FROM civil_affairs.people a JOIN tax.wages w ON a.id_number = w.id_number GROUP BY a.district

in the default mode and with ``private=True``, runs the same SQL in DuckDB on the same CSVs,
checks that all three answers agree, and prints the wall-clock times and overhead ratios.
Last line:

    query rows=N default_s=… private_s=… duckdb_s=… default_ratio=… private_ratio=…

``--products`` also runs, in the default mode, a query whose answer is a product of two agencies'
data — so it runs under Paillier (docs/query.md, "Several provider agencies"): the same JOIN with
a semi-join at a third agency (``public_security.vehicles``, a third of the identifiers):

    SELECT a.district AS district, COUNT(*) AS n, SUM(w.monthly_income) AS total,
           AVG(w.monthly_income) AS mean
    FROM civil_affairs.people a JOIN tax.wages w ON a.id_number = w.id_number
    WHERE EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = a.id_number)
    GROUP BY a.district

and prints ``products_s=…`` and its ratio to DuckDB on the last line.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time
from decimal import ROUND_HALF_UP, Decimal

SQL = ("SELECT a.district AS district, COUNT(*) AS n, SUM(w.monthly_income) AS total, AVG(w.monthly_income) AS mean "
       "FROM civil_affairs.people a JOIN tax.wages w ON a.id_number = w.id_number GROUP BY a.district")
PRODUCTS_SQL = SQL.replace(" GROUP BY", " WHERE EXISTS (SELECT 1 FROM public_security.vehicles v WHERE v.id_number = "
                           "a.id_number) GROUP BY")
GROUPS = 100


def write_data(root: pathlib.Path, n: int, seed: int) -> None:
    import numpy as np
    from pc_devkit.people import random_identity_numbers
    pool = list(dict.fromkeys(random_identity_numbers(int(n * 1.7) + 1000, seed)))
    if len(pool) < n + n // 2:
        raise SystemExit("not enough distinct identifiers; use another seed")
    rng = np.random.default_rng(seed)
    xs, ys = pool[:n], pool[n // 2:n + n // 2]
    district = rng.integers(0, GROUPS, n)
    cents = rng.integers(50_000, 2_000_000, n)
    for agency in ("civil_affairs", "tax", "public_security", "queries"):
        (root / agency).mkdir(parents=True, exist_ok=True)
    with open(root / "civil_affairs" / "people.csv", "w", encoding="utf-8") as fh:
        fh.write("id_number,district\n")
        fh.writelines(f"{i},d{g:03d}\n" for i, g in zip(xs, district.tolist()))
    with open(root / "public_security" / "vehicles.csv", "w", encoding="utf-8") as fh:
        fh.write("id_number,vehicle_type\n")
        fh.writelines(f"{i},car\n" for i in pool[n // 3:n // 3 + n // 3])
    with open(root / "tax" / "wages.csv", "w", encoding="utf-8") as fh:
        fh.write("id_number,monthly_income\n")
        fh.writelines(f"{i},{c // 100}.{c % 100:02d}\n" for i, c in zip(ys, cents.tolist()))
    (root / "queries" / "bench.sql").write_text(SQL + "\n", encoding="utf-8")
    (root / "queries" / "products.sql").write_text(PRODUCTS_SQL + "\n", encoding="utf-8")


def _money(v) -> str:
    return str(Decimal(v).quantize(Decimal("0.01")))


def duckdb_answer(root: pathlib.Path, sql: str = SQL) -> tuple[list[dict], float, float]:
    """(rows as our results file writes them, load seconds, query seconds)."""
    import duckdb
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute("CREATE SCHEMA civil_affairs; CREATE SCHEMA tax; CREATE SCHEMA public_security")
    con.execute(f"CREATE TABLE civil_affairs.people AS SELECT * FROM read_csv('{root}/civil_affairs/people.csv', "
                "header=true, columns={'id_number': 'VARCHAR', 'district': 'VARCHAR'})")
    con.execute(f"CREATE TABLE tax.wages AS SELECT * FROM read_csv('{root}/tax/wages.csv', header=true, "
                "columns={'id_number': 'VARCHAR', 'monthly_income': 'DECIMAL(18,2)'})")
    con.execute(f"CREATE TABLE public_security.vehicles AS SELECT * FROM read_csv("
                f"'{root}/public_security/vehicles.csv', header=true, "
                "columns={'id_number': 'VARCHAR', 'vehicle_type': 'VARCHAR'})")
    load = time.perf_counter() - t
    query = float("inf")
    for _ in range(3):          # best of three: the first run also warms DuckDB up
        t = time.perf_counter()
        cur = con.execute(sql + " ORDER BY district")
        rows, names = cur.fetchall(), [c[0] for c in cur.description]
        query = min(query, time.perf_counter() - t)
    out = []
    for row in rows:
        rec = dict(zip(names, row))
        if "mean" in rec:
            mean = (Decimal(rec["total"]) * 100 / rec["n"]).quantize(Decimal(1), rounding=ROUND_HALF_UP) / 100
            rec["mean"] = _money(mean)
        out.append({k: _money(v) if k in ("total", "mean") else str(v) for k, v in rec.items()})
    return out, load, query


def stages(summary_json: str, wall: float) -> str:
    """The job's step timings (coordinator record) and what the client waited outside the job
    (submission: the requester node reads and groups its rows to sign the spec)."""
    import json
    rec = json.loads(summary_json or "{}")
    steps = [(k[:-2], v) for k, v in rec.items() if k.endswith("_s") and k != "total_s"]
    out = [f"{name} {v:.2f} s" for name, v in steps]
    if "total_s" in rec:
        out.append(f"outside the job (submission, results) {wall - rec['total_s']:.2f} s")
    return ", ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of each side (default 1,000,000)")
    ap.add_argument("--dir", help="work directory (default: a fresh temporary one)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-default", action="store_true", help="run the private mode only")
    ap.add_argument("--skip-private", action="store_true", help="run the default mode only")
    ap.add_argument("--products", action="store_true",
                    help="also the query with EXISTS at a third agency (Paillier: several provider agencies)")
    args = ap.parse_args()

    from pc_client.sandbox import Sandbox
    from pc_node.psi import best_backend
    work = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="bench-query-")).resolve()
    data = work / f"rows-{args.rows}-{args.seed}-v3"
    t = time.perf_counter()
    if not (data / "tax" / "wages.csv").exists():
        write_data(data, args.rows, args.seed)
    print(f"data in {data}: {time.perf_counter() - t:.1f} s; EC backend {best_backend().name}", flush=True)
    expected, load_s, duck_s = duckdb_answer(data)
    print(f"duckdb: load {load_s:.2f} s, query {duck_s:.3f} s (best of 3)", flush=True)
    sb = Sandbox(data)
    if sb.running():
        sb.down(quiet=True)
    t = time.perf_counter()
    sb.up(log=lambda m: None, timeout=3600)
    print(f"sandbox up with both datasets imported: {time.perf_counter() - t:.1f} s (not counted below)", flush=True)
    times: dict[str, float] = {}
    ok = True
    try:
        modes = [m for m in ("default", "private") if not getattr(args, f"skip_{m}")]
        if args.products:
            products_expected, _, products_duck = duckdb_answer(data, PRODUCTS_SQL)
            modes.append("products")
        for mode in modes:
            with sb.federation("analyst@civil_affairs") as fed:
                t = time.perf_counter()
                res = fed.query(PRODUCTS_SQL if mode == "products" else SQL, out=work / f"{mode}.csv",
                                private=(mode == "private"))
                times[mode] = time.perf_counter() - t
                job = fed.job(res.job_id)
            same = res.records == (products_expected if mode == "products" else expected)
            ok &= same
            print(f"{mode}: {times[mode]:.1f} s, {len(res.records)} groups released "
                  f"({'equal to DuckDB' if same else 'MISMATCH with DuckDB'}); coordinator timings "
                  f"{job.summary_json}", flush=True)
            print(f"  per stage: {stages(job.summary_json, times[mode])}", flush=True)
    finally:
        sb.down(quiet=True)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    d, p = times.get("default", float("nan")), times.get("private", float("nan"))
    extra = ""
    if "products" in times:
        extra = f" products_s={times['products']:.1f} products_ratio={times['products'] / products_duck:.0f}"
    print(f"query rows={args.rows} default_s={d:.1f} private_s={p:.1f} duckdb_s={duck_s:.3f} "
          f"default_ratio={d / duck_s:.0f} private_ratio={p / duck_s:.0f}{extra}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
