"""The `pc` command line. Run `pc --help` or `pc COMMAND --help`.

User errors print one line on stderr and exit non-zero; no tracebacks.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

import grpc

from pc_common.errors import PcError

EXIT_USER, EXIT_REMOTE = 2, 1


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("federation (either --sandbox or explicit addresses and certificates)")
    g.add_argument("--sandbox", metavar="DIR", help="use the local sandbox brought up in DIR")
    g.add_argument("--as", dest="user", metavar="USER@AGENCY",
                   help="sandbox identity (default: the operator, or the analyst of the requesting agency)")
    g.add_argument("--coordinator", metavar="HOST:PORT")
    g.add_argument("--node", metavar="HOST:PORT", help="your own agency's node")
    g.add_argument("--cert", metavar="PEM")
    g.add_argument("--key", metavar="PEM")
    g.add_argument("--ca", metavar="PEM")


def federation(args, default_user: str | None = None):
    from pc_client.sdk import Federation
    from pc_common.certs import PartyFiles
    from pc_common.errors import InvalidInput
    if args.sandbox:
        return Federation.from_sandbox(args.sandbox, args.user or default_user)
    missing = [n for n in ("coordinator", "cert", "key", "ca") if not getattr(args, n)]
    if missing:
        raise InvalidInput("give --sandbox DIR, or all of --coordinator, --cert, --key, --ca "
                           f"(missing: {', '.join('--' + m for m in missing)})")
    return Federation(args.coordinator, PartyFiles(pathlib.Path(args.cert), pathlib.Path(args.key),
                                                   pathlib.Path(args.ca)), node=args.node)


def _print_json(doc) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def _progress_printer(enabled: bool):
    """A tqdm bar per step and party, on stderr."""
    if not enabled:
        return None
    from tqdm import tqdm
    bars: dict[str, tqdm] = {}

    def update(job) -> None:
        for p in job.progress:
            key = f"{p.step}/{p.party}"
            bar = bars.get(key)
            if bar is None:
                bar = bars[key] = tqdm(total=p.total or None, desc=f"{p.step} [{p.party}]", unit="item",
                                       file=sys.stderr, leave=False, dynamic_ncols=True)
            if p.total and bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            bar.refresh()
        if job.state in ("succeeded", "failed", "cancelled"):
            for bar in bars.values():
                bar.close()
    return update


# ----- commands ----------------------------------------------------------------------------------
def cmd_certs_init(args) -> int:
    from pc_common import certs
    nodes = [n for n in args.nodes.split(",") if n]
    clients = [c for c in (args.clients or "").split(",") if c]
    certs.init(pathlib.Path(args.dir), nodes, clients)
    print(f"created CA, coordinator, {len(nodes)} node and {len(clients)} client certificate(s) in {args.dir}")
    return 0


def cmd_coordinator_serve(args) -> int:
    from pc_common.config import CoordinatorConfig
    from pc_coordinator.server import serve
    serve(CoordinatorConfig.load(pathlib.Path(args.config)))
    return 0


def cmd_node_serve(args) -> int:
    from pc_common.config import NodeConfig
    from pc_node.server import serve
    serve(NodeConfig.load(pathlib.Path(args.config)))
    return 0


def cmd_node_import(args) -> int:
    from pc_common.config import NodeConfig
    from pc_node.importer import import_file
    from pc_node.runtime import open_store
    if args.rejects and not args.skip_invalid:
        from pc_common.errors import InvalidInput
        raise InvalidInput("--rejects only makes sense with --skip-invalid")
    store = open_store(NodeConfig.load(pathlib.Path(args.config)))
    try:
        rep = import_file(store, pathlib.Path(args.file), dataset=args.dataset,
                          metadata=pathlib.Path(args.metadata) if args.metadata else None,
                          skip_invalid=args.skip_invalid, rejects=args.rejects, replace=args.replace)
    finally:
        store.close()
    doc = {"dataset": rep.dataset, "imported": rep.imported, "rejected": rep.rejected,
           "rejects_file": rep.rejects_file, "columns": {c.name: c.type for c in rep.columns}}
    if args.json:
        _print_json(doc)
    else:
        print(f"imported {rep.imported} row(s) into '{rep.dataset}'"
              + (f"; {rep.rejected} rejected, see {rep.rejects_file}" if rep.rejected else ""))
    return 0


def cmd_node_datasets(args) -> int:
    from pc_common.config import NodeConfig
    from pc_node.runtime import open_store
    store = open_store(NodeConfig.load(pathlib.Path(args.config)))
    try:
        metas = store.datasets()
    finally:
        store.close()
    if args.json:
        _print_json([{"name": m.name, "rows": m.rows, "key_column": m.key_column,
                      "columns": {c.name: c.type for c in m.columns}} for m in metas])
    else:
        for m in metas:
            print(f"{m.name:24} {m.rows:>10} rows  key={m.key_column}  " + ", ".join(c.name for c in m.columns))
    return 0


def catalog_json(catalog) -> list[dict]:
    from google.protobuf import json_format
    return [json_format.MessageToDict(d, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for d in catalog.datasets]


def cmd_catalog(args) -> int:
    with federation(args) as fed:
        cat = fed.catalog()
    if args.json:
        _print_json(catalog_json(cat))
        return 0
    if not cat.datasets:
        print("the catalog is empty")
    for d in cat.datasets:
        print(f"{d.agency}.{d.name}  ({d.rows} rows, key {d.key_column})  {d.description}")
        for c in d.columns:
            unit = f" [{c.unit}]" if c.unit else ""
            print(f"    {c.name:22} {c.type:8} {c.sharing:11} level {c.sensitivity}{unit}  {c.description}")
        for g in d.grants:
            uses = ", ".join(f"{k}:{v}" for k, v in sorted(g.column_uses.items()))
            print(f"    grant → {g.requester} for {', '.join(g.purposes)} ({g.approval}; {uses or 'join only'})")
    return 0


def cmd_nodes(args) -> int:
    with federation(args) as fed:
        nodes = fed.nodes()
    if args.json:
        _print_json([{"node_id": n.node_id, "address": n.address, "online": n.online, "datasets": n.datasets,
                      "last_seen": n.last_seen} for n in nodes])
    else:
        for n in nodes:
            print(f"{n.node_id:20} {'online ' if n.online else 'OFFLINE'} {n.address:22} {n.datasets} dataset(s)")
    return 0


def cmd_sandbox(args) -> int:
    from pc_client.sandbox import Sandbox
    sb = Sandbox(args.dir)
    if args.action == "up":
        st = sb.up(log=(lambda m: print(m, file=sys.stderr)) if not args.json else (lambda m: None))
        if args.json:
            _print_json(st)
        else:
            print(f"sandbox up in {sb.dir}: coordinator {st['coordinator']}, nodes: "
                  + ", ".join(f"{a} {addr}" for a, addr in st["nodes"].items()))
    elif args.action == "down":
        n = sb.down()
        print(f"stopped {n} process(es)")
    else:
        st = sb.state()
        _print_json({**st, "running": sb.running()})
    return 0


def _job_doc(job) -> dict:
    return {"job_id": job.job_id, "kind": job.kind, "requester": job.requester, "state": job.state,
            "reason": job.reason, "providers": list(job.providers), "created_at": job.created_at,
            "updated_at": job.updated_at, "summary": json.loads(job.summary_json or "{}"),
            "leakage": json.loads(job.leakage_json or "{}"),
            "progress": [{"step": p.step, "party": p.party, "done": p.done, "total": p.total} for p in job.progress]}


def print_leakage(leakage: dict) -> None:
    if not leakage:
        return
    print("Leakage report — who learned what:")
    for party, what in leakage.items():
        if isinstance(what, list):
            print(f"  {party}:")
            for line in what:
                print(f"    - {line}")
        else:
            print(f"  {party}: {what}")


def cmd_jobs(args) -> int:
    with federation(args) as fed:
        if args.action == "show":
            job = fed.job(args.job)
            if args.json:
                _print_json(_job_doc(job))
                return 0
            d = _job_doc(job)
            print(f"job {d['job_id']}  {d['kind']}  {d['state']}" + (f" ({d['reason']})" if d['reason'] else ""))
            print(f"  requester {d['requester']}; providers {', '.join(d['providers']) or '-'}")
            print(f"  created {d['created_at']}, updated {d['updated_at']}")
            for k, v in d["summary"].items():
                print(f"  {k}: {v}")
            print_leakage(d["leakage"])
            return 0
        if args.action == "cancel":
            job = fed.cancel(args.job)
            print(f"job {job.job_id} {job.state}")
            return 0
        jobs = fed.jobs()
    if args.json:
        _print_json([_job_doc(j) for j in jobs])
    else:
        for j in jobs:
            print(f"{j.job_id}  {j.kind:7} {j.state:17} {j.requester:18} {j.created_at}  {j.reason}")
    return 0


def cmd_results(args) -> int:
    with federation(args) as fed:
        rows, _ = fed.results(args.job, args.out)
    print(f"wrote {rows} row(s) to {args.out}")
    return 0


def _default_user(agency: str | None) -> str | None:
    return f"analyst@{agency}" if agency else None


def cmd_verify(args) -> int:
    from pc_rules.rules import load_rule
    rule = load_rule(args.rule)
    with federation(args, _default_user(rule.requester)) as fed:
        res = fed.verify(args.rule, args.subjects, out=args.out, he=args.he,
                         on_update=_progress_printer(not args.json and sys.stderr.isatty()))
    if args.json:
        _print_json({"job_id": res.job_id, "state": res.state, "out": res.out, "rows": res.rows,
                     "summary": res.summary, "leakage": res.leakage})
        return 0
    s = res.summary
    groups, eligible = verdict_counts(res.out)
    print(f"job {res.job_id}: {eligible} of {groups} group(s) eligible; {res.rows} row(s) written to {res.out}"
          + (f" ({s['total_s']} s)" if "total_s" in s else ""))
    print_leakage(res.leakage)
    return 0


def verdict_counts(results_csv) -> tuple[int, int]:
    """(groups, eligible groups) read from a results file; verdicts never pass the coordinator."""
    import csv
    with open(results_csv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        key = 1 if len(header) > 2 and header[2] == "eligible" else 0
        verdict: dict[str, bool] = {}
        for row in reader:
            verdict[row[key]] = row[header.index("eligible")] == "true"
    return len(verdict), sum(verdict.values())


def cmd_psi(args) -> int:
    agency = args.datasets[0].split(".")[0] if args.datasets else None
    with federation(args, _default_user(agency)) as fed:
        res = fed.psi(args.datasets, cardinality_only=args.cardinality_only, out=args.out, purpose=args.purpose,
                      result_to_all=args.result_to_all,
                      on_update=_progress_printer(not args.json and sys.stderr.isatty()))
    if args.json:
        _print_json({"job_id": res.job_id, "state": res.state, "out": res.out, "rows": res.rows,
                     "summary": res.summary, "leakage": res.leakage})
        return 0
    s = res.summary
    print(f"job {res.job_id}: intersection size {s.get('intersection', '?')}"
          + (f"; {res.rows} identifier(s) written to {res.out}" if res.out else ""))
    print_leakage(res.leakage)
    return 0


def cmd_lookup(args) -> int:
    agency = args.own.split(".")[0]
    with federation(args, _default_user(agency)) as fed:
        res = fed.lookup(args.own, args.provider, out=args.out, purpose=args.purpose, labels=args.label or [],
                         masked=args.masked)
    if args.json:
        _print_json({"job_id": res.job_id, "out": res.out, "rows": res.rows, "summary": res.summary,
                     "leakage": res.leakage})
    else:
        print(f"job {res.job_id}: {res.summary.get('found', '?')} of {res.summary.get('queried', '?')} found"
              + (f"; written to {res.out}" if res.out else ""))
        print_leakage(res.leakage)
    return 0


def cmd_approvals(args) -> int:
    with federation(args) as fed:
        if args.action == "list":
            items = fed.approvals()
            if args.json:
                _print_json([{"job_id": a.job_id, "requester": a.requester, "purpose": a.purpose,
                              "datasets": list(a.datasets), "state": a.state, "reason": a.reason,
                              "created_at": a.created_at} for a in items])
            else:
                for a in items:
                    print(f"{a.job_id}  {a.state:9} {a.requester:18} {a.purpose:32} {','.join(a.datasets)}")
            return 0
        a = fed.decide(args.job, args.action == "approve", args.reason or "")
        print(f"job {a.job_id}: {a.state}")
    return 0


def cmd_policy(args) -> int:
    from pc_common.config import NodeConfig
    from pc_node.governance import Governance
    from pc_node.policy import Policy
    cfg = NodeConfig.load(pathlib.Path(args.config))
    if args.action == "unsuspend":
        gov = Governance(cfg.data_dir / "governance.db")
        ok = gov.unsuspend(args.requester)
        print(f"requester '{args.requester}' " + ("may use this node again" if ok else "was not suspended"))
        return 0
    policy = Policy(cfg.policy)
    policy.reload()  # raise on a broken file: the operator should know
    grants = [g for g in policy.grants() if g.requester == args.requester]
    doc = [{"dataset": g.dataset, "purposes": list(g.purposes), "columns": g.columns, "approval": g.approval,
            "reveal": g.reveal, "quota": g.quota} for g in grants]
    if args.json:
        _print_json(doc)
    elif not doc:
        print(f"'{args.requester}' may do nothing at node '{cfg.node_id}' (default deny)")
    else:
        for g in doc:
            uses = ", ".join(f"{c} as {u}" for c, u in sorted(g["columns"].items())) or "join on the key only"
            print(f"{g['dataset']}: for {', '.join(g['purposes'])}; {uses}; approval {g['approval']}; "
                  f"reveal up to {g['reveal']}")
    return 0


def _audit_paths(args) -> list[tuple[str, pathlib.Path]]:
    if args.sandbox:
        root = pathlib.Path(args.sandbox).resolve() / ".sandbox"
        return [(p.parent.name, p) for p in sorted(root.glob("*/audit.db"))]
    if args.data_dir:
        return [(pathlib.Path(args.data_dir).name, pathlib.Path(args.data_dir) / "audit.db")]
    from pc_common.errors import InvalidInput
    raise InvalidInput("give --sandbox DIR or --data-dir DIR")


def cmd_audit(args) -> int:
    from pc_common.audit import AuditLog, verify_export
    if args.action == "verify-export":
        rep = verify_export(args.file)
        print(("ok" if rep.ok else "FAILED") + f": {rep.entries} entries" +
              "".join(f"\n  - {p}" for p in rep.problems))
        return 0 if rep.ok else EXIT_REMOTE
    paths = _audit_paths(args)
    if not paths:
        from pc_common.errors import NotFound
        raise NotFound("no audit logs found")
    failed = False
    out = []
    for name, path in paths:
        log = AuditLog.open_existing(path) if hasattr(AuditLog, "open_existing") else AuditLog(path, name, None)
        if args.action == "export":
            target = pathlib.Path(args.out) / f"{name}.audit.jsonl" if len(paths) > 1 else pathlib.Path(args.out)
            target.parent.mkdir(parents=True, exist_ok=True)
            log.export(target)
            out.append({"party": name, "file": str(target)})
            continue
        rep = log.verify()
        failed |= not rep.ok
        out.append({"party": name, "ok": rep.ok, "entries": rep.entries, "problems": list(rep.problems)})
    if args.json:
        _print_json(out)
    else:
        for o in out:
            if "file" in o:
                print(f"{o['party']}: exported to {o['file']}")
            else:
                print(f"{o['party']:20} {'ok' if o['ok'] else 'TAMPERED'}  {o['entries']} entries"
                      + "".join(f"\n    - {p}" for p in o["problems"]))
    return EXIT_REMOTE if failed else 0


def cmd_demo(args) -> int:
    from pc_client.demo import run_demo
    return run_demo(pathlib.Path(args.dir), households=args.households, seed=args.seed, keep=args.keep,
                    as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc", description="Privacy-computing federated queries: private set "
                                "intersection and homomorphic aggregation between agencies (数据可用不可见).")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    certs = sub.add_parser("certs", help="development certificate authority").add_subparsers(dest="action",
                                                                                              required=True)
    ci = certs.add_parser("init", help="create a CA and certificates for a federation")
    ci.add_argument("dir")
    ci.add_argument("--nodes", required=True, help="comma-separated node ids, e.g. civil_affairs,housing")
    ci.add_argument("--clients", help="comma-separated: user@agency, officer:user@agency, operator:user")
    ci.set_defaults(fn=cmd_certs_init)

    co = sub.add_parser("coordinator", help="run the coordinator").add_subparsers(dest="action", required=True)
    cs = co.add_parser("serve", help="serve until SIGTERM")
    cs.add_argument("--config", required=True)
    cs.set_defaults(fn=cmd_coordinator_serve)

    node = sub.add_parser("node", help="run and manage an agency node").add_subparsers(dest="action", required=True)
    ns = node.add_parser("serve", help="serve until SIGTERM")
    ns.add_argument("--config", required=True)
    ns.set_defaults(fn=cmd_node_serve)
    ni = node.add_parser("import", help="import a CSV or Parquet file as a dataset (all-or-nothing by default)")
    ni.add_argument("--config", required=True)
    ni.add_argument("file")
    ni.add_argument("--dataset", help="dataset name (default: the file name)")
    ni.add_argument("--metadata", help="column metadata TOML (default: FILE with .toml)")
    ni.add_argument("--skip-invalid", action="store_true", help="import valid rows, write rejected ones to --rejects")
    ni.add_argument("--rejects", help="where to write rejected rows with reasons")
    ni.add_argument("--replace", action="store_true", help="replace an existing dataset of that name")
    ni.add_argument("--json", action="store_true")
    ni.set_defaults(fn=cmd_node_import)
    nd = node.add_parser("datasets", help="list this node's datasets")
    nd.add_argument("--config", required=True)
    nd.add_argument("--json", action="store_true")
    nd.set_defaults(fn=cmd_node_datasets)

    for name, fn, hlp in (("catalog", cmd_catalog, "the federation's data catalog (政务数据目录)"),
                          ("nodes", cmd_nodes, "nodes in the directory and whether they are online")):
        c = sub.add_parser(name, help=hlp)
        _add_connection(c)
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(fn=fn)

    sb = sub.add_parser("sandbox", help="a local federation from a folder of CSVs")
    sb.add_argument("action", choices=("up", "down", "status"))
    sb.add_argument("dir")
    sb.add_argument("--json", action="store_true")
    sb.set_defaults(fn=cmd_sandbox)

    v = sub.add_parser("verify", help="run an eligibility verification and write the results file")
    _add_connection(v)
    v.add_argument("--rule", required=True, help="rule file (TOML)")
    v.add_argument("--subjects", required=True, help="subjects CSV (subject and group columns named by the rule)")
    v.add_argument("--out", required=True, help="results CSV to write")
    v.add_argument("--he", choices=("bfv", "paillier"), default="bfv", help="homomorphic backend (default: bfv)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_verify)

    ps = sub.add_parser("psi", help="private set intersection of your dataset with others'")
    _add_connection(ps)
    ps.add_argument("datasets", nargs="+", metavar="AGENCY.DATASET", help="yours first, then one or more providers'")
    ps.add_argument("--cardinality-only", action="store_true", help="learn only the size of the intersection")
    ps.add_argument("--result-to-all", action="store_true", help="two-party only: the provider learns it too")
    ps.add_argument("--out", help="write the intersection (identifiers) to this file")
    ps.add_argument("--purpose", default="data_matching")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(fn=cmd_psi)

    lk = sub.add_parser("lookup", help="query-private lookup (匿踪查询) of your identifiers in a provider dataset")
    _add_connection(lk)
    lk.add_argument("own", metavar="AGENCY.DATASET", help="your dataset of identifiers to look up")
    lk.add_argument("provider", metavar="AGENCY.DATASET")
    lk.add_argument("--label", action="append", help="provider column to return for matches (policy permitting)")
    lk.add_argument("--masked", action="store_true", help="ask for masked label values (e.g. 粤B****12)")
    lk.add_argument("--out")
    lk.add_argument("--purpose", default="data_matching")
    lk.add_argument("--json", action="store_true")
    lk.set_defaults(fn=cmd_lookup)

    j = sub.add_parser("jobs", help="list jobs, or show / cancel one")
    _add_connection(j)
    j.add_argument("action", nargs="?", choices=("list", "show", "cancel"), default="list")
    j.add_argument("job", nargs="?")
    j.add_argument("--json", action="store_true")
    j.set_defaults(fn=cmd_jobs)

    r = sub.add_parser("results", help="fetch a finished job's results file from your node")
    _add_connection(r)
    r.add_argument("job")
    r.add_argument("--out", required=True)
    r.set_defaults(fn=cmd_results)

    ap = sub.add_parser("approvals", help="data officer: pending approvals (事前审批)")
    _add_connection(ap)
    ap.add_argument("action", choices=("list", "approve", "reject"))
    ap.add_argument("job", nargs="?")
    ap.add_argument("--reason")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(fn=cmd_approvals)

    po = sub.add_parser("policy", help="node operator: explain grants, lift suspensions")
    po.add_argument("action", choices=("check", "unsuspend"))
    po.add_argument("--config", required=True, help="the node's config")
    po.add_argument("--requester", required=True)
    po.add_argument("--json", action="store_true")
    po.set_defaults(fn=cmd_policy)

    au = sub.add_parser("audit", help="verify or export the tamper-evident audit logs")
    au.add_argument("action", choices=("verify", "export", "verify-export"))
    au.add_argument("--sandbox", metavar="DIR")
    au.add_argument("--data-dir", metavar="DIR", help="a node's or the coordinator's data directory")
    au.add_argument("--out", help="export: file (one log) or folder")
    au.add_argument("--file", help="verify-export: an exported file")
    au.add_argument("--json", action="store_true")
    au.set_defaults(fn=cmd_audit)

    d = sub.add_parser("demo", help="generate a synthetic city, bring a sandbox up, run the allowance rule")
    d.add_argument("--dir", default="pc-demo", help="working folder (default: ./pc-demo)")
    d.add_argument("--households", type=int, default=10000)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command in ("node", "coordinator")
                        else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if getattr(args, "action", None) in ("show", "cancel", "approve", "reject") and not getattr(args, "job", "x"):
        parser.error(f"{args.command} {args.action} needs a job id")
    try:
        return args.fn(args)
    except PcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") and exc.code() else "ERROR"
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"error: {code}: {detail}", file=sys.stderr)
        return EXIT_REMOTE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
