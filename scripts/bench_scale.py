#!/usr/bin/env python3
"""Scale benchmark (issue 14): import of a large CSV and lookups in the imported dataset.

* **import**: a synthetic vehicles-like CSV of ``--rows`` rows (valid GB 11643 identifiers,
  some people with several rows; plate, vehicle type, value, registration date) is generated
  once (numpy; cached next to ``--work``) and imported into a fresh node store through the
  node's own importer; rows/s, the seconds per stage and the peak resident memory of the
  import (a child process, so the figure is the importer's own) are printed.
* **lookup**: ``rows_for_keys`` of ``--subjects`` identifiers (half present, half absent) in
  that dataset, as a verification's provider step reads them (one column and all columns).
* ``keys()``: every identifier of the dataset decrypted (what PSI and lookups read).
* ``--pg-verify`` (instead of the above): a throw-away PostgreSQL cluster (``tests/pg_kit.py``),
  the synthetic city's tax.wages, hrss.pensions and public_security.vehicles loaded into it with
  ``COPY FROM STDIN`` and padded with other residents to ``--pg-rows`` rows each (index on the
  key column), a sandbox whose nodes attach them (``<dataset>.postgres.toml``), and the dibao
  verification of ``--households`` households through it, checked against the ground truth.

Timings on a shared machine vary with its load: the script prints the load average before
and after, so that figures taken under contention can be told apart.

    python scripts/bench_scale.py --rows 10000000 --subjects 270000

    python scripts/bench_scale.py --pg-verify --pg-rows 10000000 --households 100000

The last line is machine-readable:
    pgverify households=… subjects=… pg_rows=… load_s=… index_s=… up_s=… verify_s=… mismatches=…
    scale rows=… import_s=… rows_per_s=… peak_rss_mb=… lookup_s=… lookup_one_column_s=…
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_WEIGHTS = np.array([pow(2, 17 - i, 11) for i in range(17)], dtype=np.int64)
_CHECK = np.frombuffer(b"10X98765432", dtype=np.uint8)
_REGIONS = np.array([110101, 110102, 110105, 110106, 310101, 310104, 440103, 440106, 510104, 610102],
                    dtype=np.int64)


def identifiers(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random valid identity numbers as an (n, 18) uint8 array of ASCII."""
    region = _REGIONS[rng.integers(0, len(_REGIONS), n)]
    days = rng.integers(0, 365 * 60, n).astype("timedelta64[D]") + np.datetime64("1950-01-01")
    birth = _ymd_fast(days)
    seq = rng.integers(0, 1000, n)
    first17 = region * 10 ** 11 + birth * 1000 + seq
    digits = np.empty((n, 18), dtype=np.uint8)
    x = first17.copy()
    for i in range(16, -1, -1):
        digits[:, i] = x % 10
        x //= 10
    check = _CHECK[(digits[:, :17].astype(np.int64) @ _WEIGHTS) % 11]
    digits[:, :17] += 48
    digits[:, 17] = check
    return digits


def _ymd_fast(days: np.ndarray) -> np.ndarray:
    y = days.astype("datetime64[Y]")
    m = days.astype("datetime64[M]")
    year = y.astype(np.int64) + 1970
    month = (m - y).astype(np.int64) + 1
    day = (days - m).astype(np.int64) + 1
    return year * 10000 + month * 100 + day


def generate_csv(path: pathlib.Path, rows: int, seed: int = 14) -> pathlib.Path:
    """A vehicles-like CSV of ``rows`` rows, written in chunks (bounded memory)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    rng = np.random.default_rng(seed)
    people = identifiers(rng, max(1, rows * 4 // 5))
    kinds = np.array(["car", "motorcycle", "truck", "van"])
    tmp = path.with_suffix(".tmp")
    with pacsv.CSVWriter(tmp, pa.schema([(c, pa.string()) for c in
                                         ("id_number", "plate", "vehicle_type", "value", "registered")]),
                         write_options=pacsv.WriteOptions(quoting_style="none")) as w:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            owner = people[rng.integers(0, len(people), n)]
            ids = owner.view("S18").ravel().astype(str)
            plate = np.char.add("京A", rng.integers(10000, 99999, n).astype(str))
            value = np.char.add(rng.integers(1000, 500000, n).astype(str), ".00")
            reg = (np.datetime64("2000-01-01") + rng.integers(0, 9000, n).astype("timedelta64[D]")).astype(str)
            w.write_table(pa.table({"id_number": ids, "plate": plate, "vehicle_type": kinds[rng.integers(0, 4, n)],
                                    "value": value, "registered": reg}))
    tmp.replace(path)
    return path


def _child_import(work: pathlib.Path, csv_path: pathlib.Path, progress: bool) -> dict:
    """Run the import in a child process and return its figures (peak RSS is the child's own)."""
    code = f"""
import json, resource, sys, time, pathlib
sys.path.insert(0, {str(ROOT)!r})
from pc_node.runtime import open_cipher
from pc_node.store import NodeStore
from pc_node.importer import import_file
work = pathlib.Path({str(work)!r})
store = NodeStore(work / "node.db", open_cipher(work, work / "master.key"))
t = time.perf_counter()
rep = import_file(store, pathlib.Path({str(csv_path)!r}), dataset="vehicles", replace=True, progress={progress})
dt = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"rows": rep.imported, "seconds": dt, "cpu_s": use.ru_utime + use.ru_stime,
                  "peak_rss_mb": use.ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--subjects", type=int, default=270_000)
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "pc-bench-scale")
    ap.add_argument("--progress", action="store_true", help="show the importer's progress bar")
    ap.add_argument("--pg-verify", action="store_true",
                    help="measure a verification against attached PostgreSQL tables instead")
    ap.add_argument("--pg-rows", type=int, default=10_000_000, help="rows of each PostgreSQL table")
    ap.add_argument("--households", type=int, default=100_000)
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.pg_verify:
        return pg_verify(a)
    csv_path = a.work / f"vehicles-{a.rows}.csv"
    if not csv_path.exists():
        t = time.perf_counter()
        generate_csv(csv_path, a.rows)
        print(f"generated {csv_path} ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
    store_dir = a.work / "node"
    store_dir.mkdir(exist_ok=True)
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    imp = _child_import(store_dir, csv_path, a.progress)
    rate = imp["rows"] / imp["seconds"]
    print(f"import: {imp['rows']:,} rows in {imp['seconds']:.1f} s = {rate:,.0f} rows/s, "
          f"peak RSS {imp['peak_rss_mb']:.0f} MB, {imp['cpu_s']:.1f} CPU seconds (all threads, process start "
          f"included: on two idle cores the import takes at least half that)")

    from pc_node.runtime import open_cipher
    from pc_node.store import NodeStore
    store = NodeStore(store_dir / "node.db", open_cipher(store_dir, store_dir / "master.key"))
    rng = np.random.default_rng(7)
    present = _sample_ids(csv_path, a.subjects // 2, rng)
    absent = identifiers(np.random.default_rng(99), a.subjects - len(present)).view("S18").ravel().astype(str).tolist()
    subjects = present + absent
    t, c = time.perf_counter(), time.process_time()
    found = store.rows_for_keys("vehicles", subjects)
    lookup_s, lookup_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    store.rows_for_keys("vehicles", subjects, columns=["value"])
    one_s, one_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"lookup: {len(subjects):,} subjects, {len(found):,} found, all columns {lookup_s:.2f} s "
          f"({lookup_cpu:.1f} CPU s), one column {one_s:.2f} s ({one_cpu:.1f} CPU s)")
    t, c = time.perf_counter(), time.process_time()
    keys = store.keys("vehicles")
    print(f"keys(): {len(keys):,} identifiers in {time.perf_counter() - t:.2f} s ({time.process_time() - c:.1f} CPU s)")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"scale rows={imp['rows']} import_s={imp['seconds']:.2f} import_cpu_s={imp['cpu_s']:.1f} rows_per_s={rate:.0f} "
          f"peak_rss_mb={imp['peak_rss_mb']:.0f} lookup_s={lookup_s:.2f} lookup_one_column_s={one_s:.2f}")
    return 0


# The dibao rule's provider tables that live in PostgreSQL: columns (PostgreSQL types) and the
# row a resident outside the applicant households gets (he or she changes no verdict).
PG_TABLES = {
    "tax.wages": ({"id_number": "text", "employer": "text", "monthly_income": "numeric"},
                  {"employer": "新疆某有限公司", "monthly_income": "8000.00"}),
    "hrss.pensions": ({"id_number": "text", "monthly_amount": "numeric"}, {"monthly_amount": "3000.00"}),
    "public_security.vehicles": ({"id_number": "text", "plate": "text", "vehicle_type": "text",
                                  "registered_on": "date"},
                                 {"plate": "新A00001", "vehicle_type": "car", "registered_on": "2015-05-01"}),
}


def _load_table(conn, table: str, city_csv: pathlib.Path, rows: int, seed: int, applicants: np.ndarray) -> int:
    """``table`` = the city's CSV rows plus filler residents up to ``rows``, by ``COPY FROM STDIN``
    in CSV blocks of a million rows (the bytes are made by pyarrow; PostgreSQL parses them)."""
    import io
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from psycopg import sql
    columns, filler = PG_TABLES[table]
    schema, name = table.split(".")
    ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(
        sql.SQL("{} " + t).format(sql.Identifier(c)) for c, t in columns.items())))
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER {})")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    with conn.cursor() as cur:
        with open(city_csv, encoding="utf-8") as fh:
            header = fh.readline().strip().split(",")
            assert header == list(columns), (table, header)
            n = sum(1 for _ in fh)
        with cur.copy(copy.format(ident, cols, sql.SQL("true"))) as cp, open(city_csv, "rb") as fh:
            while block := fh.read(1 << 20):
                cp.write(block)
        rng = np.random.default_rng(seed)
        for start in range(n, rows, 1_000_000):
            k = min(1_000_000, rows - start)
            ids = np.empty(0, dtype="S18")
            while len(ids) < k:     # an applicant drawn as filler would change a verdict: drop him
                more = identifiers(rng, k - len(ids)).view("S18").ravel()
                ids = np.concatenate([ids, more[~np.isin(more, applicants)]])
            data = {"id_number": ids.astype(str)}
            data.update({c: pa.array([v] * k) for c, v in filler.items()})
            buf = io.BytesIO()
            pacsv.write_csv(pa.table(data), buf, write_options=pacsv.WriteOptions(include_header=False))
            with cur.copy(copy.format(ident, cols, sql.SQL("false"))) as cp:
                cp.write(buf.getbuffer())
    return max(rows, n)


def pg_verify(a) -> int:
    """The ``--pg-verify`` mode (see the module docstring)."""
    import csv
    import shutil
    from pc_client.sandbox import Sandbox
    from pc_devkit import ground_truth
    from pc_devkit.synth_city import generate_city
    from pc_rules.rules import load_rule
    from tests.pg_kit import PgCluster, find
    if not (find("pg_ctl") and find("initdb")):
        print("pg_ctl/initdb not found: install Debian's postgresql package")
        return 2
    city = a.work / f"pg-city-{a.households}"
    shutil.rmtree(city, ignore_errors=True)
    t = time.perf_counter()
    generate_city(city, households=a.households, seed=11)
    rule_path, subjects = city / "rules" / "dibao.toml", city / "civil_affairs" / "applicants.csv"
    truth = ground_truth.evaluate(load_rule(rule_path), city, subjects)   # from the CSVs, before moving them
    print(f"city of {a.households:,} households generated, ground truth in {time.perf_counter() - t:.1f} s")
    with open(subjects, newline="", encoding="utf-8") as fh:
        applicants = np.array([ground_truth.normalise_id(r["id_number"]) for r in csv.DictReader(fh)], dtype="S18")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    pg = PgCluster().start()
    try:
        load_s = index_s = 0.0
        with pg.connect() as conn:
            conn.execute("SET maintenance_work_mem = '512MB'")
            for i, table in enumerate(PG_TABLES):
                agency, name = table.split(".")
                src = city / ".pg-source" / agency / f"{name}.csv"    # out of the sandbox's sight
                src.parent.mkdir(parents=True, exist_ok=True)
                (city / agency / f"{name}.csv").replace(src)
                t = time.perf_counter()
                n = _load_table(conn, table, src, a.pg_rows, seed=100 + i, applicants=applicants)
                dl = time.perf_counter() - t
                t = time.perf_counter()
                conn.execute(f'CREATE INDEX ON {table} ("id_number")')
                conn.execute(f"ANALYZE {table}")
                di = time.perf_counter() - t
                load_s, index_s = load_s + dl, index_s + di
                print(f"  {table}: {n:,} rows loaded in {dl:.1f} s ({n / dl:,.0f} rows/s), index + analyze {di:.1f} s",
                      flush=True)
                meta = city / agency / f"{name}.toml"
                body = "\n".join(line for line in meta.read_text(encoding="utf-8").splitlines()
                                  if not line.startswith("key_column"))
                (city / agency / f"{name}.postgres.toml").write_text(
                    f'table = "{table}"\ndsn = "{pg.dsn}"\nkey = "id_number"\n{body}\n', encoding="utf-8")
                meta.unlink()
        sb = Sandbox(city)
        t0 = time.perf_counter()
        sb.up(log=lambda m: print(f"  [{time.perf_counter() - t0:6.1f} s] {m}", flush=True), timeout=3600)
        up_s = time.perf_counter() - t0
        print(f"sandbox up (3 attachments, each a scan of its key column, + the small CSV imports): {up_s:.1f} s")
        try:
            out = a.work / "pg_verify_results.csv"
            t = time.perf_counter()
            with sb.federation("analyst@civil_affairs") as fed:
                res = fed.verify(rule_path, subjects, out=out)
            verify_s = time.perf_counter() - t
            s = res.summary
            for k in ("admit_s", "prepare_s", "evaluate_s", "aggregate_s", "mask_s", "compare_s", "total_s"):
                print(f"  coordinator {k:12} {s.get(k)}")
        finally:
            sb.down(quiet=True)
        with open(out, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        wrong = sum((r["eligible"] == "true") != g["eligible"] for r, g in zip(rows, truth)) + abs(len(rows) - len(truth))
        print(f"verification end to end (upload + job + results file): {verify_s:.2f} s; "
              f"{len(rows):,} verdicts checked against the ground truth, {wrong} mismatches")
    finally:
        pg.stop()
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"pgverify households={a.households} subjects={s.get('subjects')} pg_rows={a.pg_rows} load_s={load_s:.1f} "
          f"index_s={index_s:.1f} up_s={up_s:.1f} verify_s={verify_s:.2f} mismatches={wrong}")
    return 0 if wrong == 0 else 1


def _sample_ids(csv_path: pathlib.Path, n: int, rng) -> list[str]:
    """``n`` identifiers of the CSV's first million rows (distinct)."""
    import pyarrow.csv as pacsv
    with pacsv.open_csv(csv_path, convert_options=pacsv.ConvertOptions(include_columns=["id_number"])) as r:
        ids = []
        for batch in r:
            ids.extend(batch.column(0).to_pylist())
            if len(ids) >= 1_000_000:
                break
    uniq = sorted(set(ids))
    return [uniq[i] for i in rng.choice(len(uniq), size=min(n, len(uniq)), replace=False)]


if __name__ == "__main__":
    sys.exit(main())
