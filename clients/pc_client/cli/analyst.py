"""Analysts and caseworkers: `pc catalog`, `pc verify`, `pc psi`, `pc lookup`, `pc query`, `pc jobs`,
`pc results` — all through the SDK (``pc_client.sdk.Federation``)."""
from __future__ import annotations

import sys

from pc_client.cli.common import add_connection, default_user, federation
from pc_client.report import (catalog_json, job_doc, print_catalog, print_job, print_json, print_leakage,
                              progress_printer, result_doc)


def _progress(args):
    return progress_printer(not args.json and sys.stderr.isatty())


def cmd_catalog(args) -> int:
    with federation(args) as fed:
        cat = fed.catalog()
    if args.json:
        print_json(catalog_json(cat))
    else:
        print_catalog(cat)
    return 0


def cmd_jobs(args) -> int:
    with federation(args) as fed:
        if args.action == "show":
            d = job_doc(fed.job(args.job))
            if args.json:
                print_json(d)
            else:
                print_job(d)
            return 0
        if args.action == "cancel":
            job = fed.cancel(args.job)
            print(f"job {job.job_id} {job.state}")
            return 0
        jobs = fed.jobs()
    if args.json:
        print_json([job_doc(j) for j in jobs])
    else:
        for j in jobs:
            print(f"{j.job_id}  {j.kind:7} {j.state:17} {j.requester:18} {j.created_at}  {j.reason}")
    return 0


def cmd_results(args) -> int:
    with federation(args) as fed:
        rows, _ = fed.results(args.job, args.out)
    print(f"wrote {rows} row(s) to {args.out}")
    return 0


def cmd_verify(args) -> int:
    from pc_rules.rules import load_rule
    rule = load_rule(args.rule)
    with federation(args, default_user(rule.requester)) as fed:
        res = fed.verify(args.rule, args.subjects, out=args.out, he=args.he, on_update=_progress(args))
    if args.json:
        print_json(result_doc(res))
        return 0
    s = res.summary   # the requester node's summary counts the verdicts; they never pass the coordinator
    print(f"job {res.job_id}: {s.get('eligible_groups', '?')} of {s.get('groups', '?')} group(s) eligible;"
          f" {res.rows} row(s) written to {res.out}" + (f" ({s['total_s']} s)" if "total_s" in s else ""))
    print_leakage(res.leakage)
    return 0


def cmd_psi(args) -> int:
    agency = args.datasets[0].split(".")[0] if args.datasets else None
    with federation(args, default_user(agency)) as fed:
        res = fed.psi(args.datasets, cardinality_only=args.cardinality_only, out=args.out, purpose=args.purpose,
                      result_to_all=args.result_to_all, on_update=_progress(args), protocol=args.protocol or "",
                      crypto=args.crypto or "")
    if args.json:
        print_json(result_doc(res))
        return 0
    print(f"job {res.job_id}: intersection size {res.summary.get('intersection', '?')}"
          + (f"; {res.rows} identifier(s) written to {res.out}" if res.out else ""))
    print_leakage(res.leakage)
    return 0


def cmd_lookup(args) -> int:
    agency = args.own.split(".")[0]
    with federation(args, default_user(agency)) as fed:
        res = fed.lookup(args.own, args.provider, out=args.out, purpose=args.purpose, labels=args.label or [],
                         masked=args.masked)
    if args.json:
        print_json(result_doc(res, state=False))
    else:
        print(f"job {res.job_id}: {res.summary.get('found', '?')} of {res.summary.get('queried', '?')} found"
              + (f"; written to {res.out}" if res.out else ""))
        print_leakage(res.leakage)
    return 0


def cmd_query(args) -> int:
    from pc_rules.query import parse_query
    agency = parse_query(args.sql).requester
    with federation(args, default_user(agency)) as fed:
        res = fed.query(args.sql, out=args.out, min_group_size=args.min_group_size, purpose=args.purpose,
                        on_update=_progress(args), private=args.private, epsilon=args.epsilon)
    if args.json:
        print_json({**result_doc(res), "records": res.records})
        return 0
    s = res.summary
    if not args.out:
        names = list(res.records[0]) if res.records else []
        print(",".join(names))
        for r in res.records:
            print(",".join(r[n] for n in names))
    print(f"job {res.job_id}: {s.get('released', '?')} group(s) released, {s.get('suppressed', '?')} suppressed"
          f" (fewer than {s.get('min_group_size', '?')} subjects)" + (f"; epsilon {s['epsilon']:g} spent"
          if s.get("epsilon") else "") + (f"; written to {res.out}" if res.out else ""))
    print_leakage(res.leakage)
    return 0


# ----- parsers -------------------------------------------------------------------------------------
def add_catalog(sub) -> None:
    c = sub.add_parser("catalog", help="the federation's data catalog (政务数据目录)")
    add_connection(c)
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(fn=cmd_catalog)


def add_verify(sub) -> None:
    v = sub.add_parser("verify", help="run an eligibility verification and write the results file")
    add_connection(v)
    v.add_argument("--rule", required=True, help="rule file (TOML)")
    v.add_argument("--subjects", required=True, help="subjects CSV (subject and group columns named by the rule)")
    v.add_argument("--out", required=True, help="results CSV to write")
    v.add_argument("--he", choices=("bfv", "paillier"), default="bfv", help="homomorphic backend (default: bfv)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_verify)


def add_psi(sub) -> None:
    ps = sub.add_parser("psi", help="private set intersection of your dataset with others'")
    add_connection(ps)
    ps.add_argument("datasets", nargs="+", metavar="AGENCY.DATASET", help="yours first, then one or more providers'")
    ps.add_argument("--cardinality-only", action="store_true", help="learn only the size of the intersection")
    ps.add_argument("--result-to-all", action="store_true", help="two-party only: the provider learns it too")
    ps.add_argument("--protocol", choices=("kkrt", "ecdh"), default=None,
                    help="kkrt (OT extension; default for two-party intersections) or ecdh (default for "
                         "--cardinality-only, --result-to-all and k-party)")
    ps.add_argument("--crypto", choices=("aes", "gm"), default=None,
                    help="KKRT's primitives: aes (default: AES-128, BLAKE3) or gm, the national profile "
                         "(国密: SM4 for the PRG and code, SM3 for the hashes; about half the speed)")
    ps.add_argument("--out", help="write the intersection (identifiers) to this file")
    ps.add_argument("--purpose", default="data_matching")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(fn=cmd_psi)


def add_lookup(sub) -> None:
    lk = sub.add_parser("lookup", help="query-private lookup (匿踪查询) of your identifiers in a provider dataset")
    add_connection(lk)
    lk.add_argument("own", metavar="AGENCY.DATASET", help="your dataset of identifiers to look up")
    lk.add_argument("provider", metavar="AGENCY.DATASET")
    lk.add_argument("--label", action="append", help="provider column to return for matches (policy permitting)")
    lk.add_argument("--masked", action="store_true", help="ask for masked label values (e.g. 粤B****12)")
    lk.add_argument("--out")
    lk.add_argument("--purpose", default="data_matching")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(fn=cmd_lookup)


def add_query(sub) -> None:
    q = sub.add_parser("query", help="federated query: joint statistics in SQL (docs/query.md)")
    add_connection(q)
    q.add_argument("sql", help="SELECT … FROM your.dataset a [JOIN agency.dataset b ON a.key = b.key] …")
    q.add_argument("--out", help="results CSV to write (default: print the rows)")
    q.add_argument("--min-group-size", type=int, default=5,
                   help="omit groups with fewer distinct subjects (at least the providers' grants; default 5)")
    q.add_argument("--purpose", default="data_matching")
    q.add_argument("--private", action="store_true",
                   help="query-private mode: providers learn only set sizes (docs/query_private.md)")
    q.add_argument("--epsilon", type=float, default=None,
                   help="differential privacy: the ε this query spends (noise added under encryption)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_query)


def add_jobs(sub) -> None:
    j = sub.add_parser("jobs", help="list jobs, or show / cancel one")
    add_connection(j)
    j.add_argument("action", nargs="?", choices=("list", "show", "cancel"), default="list")
    j.add_argument("job", nargs="?")
    j.add_argument("--json", action="store_true")
    j.set_defaults(fn=cmd_jobs)


def add_results(sub) -> None:
    r = sub.add_parser("results", help="fetch a finished job's results file from your node")
    add_connection(r)
    r.add_argument("job")
    r.add_argument("--out", required=True)
    r.set_defaults(fn=cmd_results)


COMMANDS = {"catalog": add_catalog, "verify": add_verify, "psi": add_psi, "lookup": add_lookup,
            "query": add_query, "jobs": add_jobs, "results": add_results}
