"""`pc certs …` and `pc node …`: the agency node's operator (through ``pc_node.admin`` and
``pc_node.server.serve``, never the node's store)."""
from __future__ import annotations

import pathlib
import sys

from pc_client.cli.common import node_config
from pc_client.report import print_json


def cmd_certs_init(args) -> int:
    from pc_common import certs
    nodes = [n for n in args.nodes.split(",") if n]
    clients = [c for c in (args.clients or "").split(",") if c]
    certs.init(pathlib.Path(args.dir), nodes, clients)
    print(f"created CA, coordinator, {len(nodes)} node and {len(clients)} client certificate(s) in {args.dir}")
    return 0


def cmd_node_serve(args) -> int:
    from pc_node.server import serve
    serve(node_config(args))
    return 0


def cmd_node_import(args) -> int:
    from pc_node import admin
    if args.rejects and not args.skip_invalid:
        from pc_common.errors import InvalidInput
        raise InvalidInput("--rejects only makes sense with --skip-invalid")
    rep = admin.import_dataset(node_config(args), pathlib.Path(args.file), dataset=args.dataset,
                               metadata=pathlib.Path(args.metadata) if args.metadata else None,
                               skip_invalid=args.skip_invalid, rejects=args.rejects, replace=args.replace,
                               progress=not args.json and sys.stderr.isatty())     # a bar for people only
    doc = {"dataset": rep.dataset, "imported": rep.imported, "rejected": rep.rejected,
           "rejects_file": rep.rejects_file, "columns": {c.name: c.type for c in rep.columns}}
    if args.json:
        print_json(doc)
    else:
        print(f"imported {rep.imported} row(s) into '{rep.dataset}'"
              + (f"; {rep.rejected} rejected, see {rep.rejects_file}" if rep.rejected else ""))
    return 0


def cmd_node_attach(args) -> int:
    import logging
    from pc_node import admin
    logging.getLogger("pc_node.admin").propagate = False     # the warnings are printed below, once
    rep = admin.attach_dataset(node_config(args), args.dataset, args.table, dsn=args.dsn, dsn_file=args.dsn_file,
                               dsn_env=args.dsn_env, key_column=args.key,
                               metadata=pathlib.Path(args.meta) if args.meta else None, replace=args.replace)
    doc = {"dataset": rep.dataset, "table": rep.table, "rows": rep.rows, "skipped": rep.skipped,
           "columns": {c.name: c.type for c in rep.columns}, "warnings": rep.warnings}
    if args.json:
        print_json(doc)
    else:
        print(f"attached {rep.table} as '{rep.dataset}': {rep.rows} row(s)"
              + (f"; {rep.skipped} with an invalid identifier skipped" if rep.skipped else ""))
        for w in rep.warnings:
            print(f"warning: {w}")
    return 0


def cmd_node_datasets(args) -> int:
    from pc_node import admin
    metas = admin.datasets(node_config(args))
    if args.json:
        print_json([{"name": m.name, "rows": m.rows, "key_column": m.key_column,
                     "columns": {c.name: c.type for c in m.columns}} for m in metas])
    else:
        for m in metas:
            print(f"{m.name:24} {m.rows:>10} rows  key={m.key_column}  " + ", ".join(c.name for c in m.columns))
    return 0


def add_certs(sub) -> None:
    certs = sub.add_parser("certs", help="development certificate authority").add_subparsers(dest="action",
                                                                                              required=True)
    ci = certs.add_parser("init", help="create a CA and certificates for a federation")
    ci.add_argument("dir")
    ci.add_argument("--nodes", required=True, help="comma-separated node ids, e.g. civil_affairs,housing")
    ci.add_argument("--clients", help="comma-separated: user@agency, officer:user@agency, operator:user")
    ci.set_defaults(fn=cmd_certs_init)


def add_node(sub) -> None:
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
    na = node.add_parser("attach", help="attach a PostgreSQL table as a dataset (read at job time)")
    na.add_argument("--config", required=True)
    na.add_argument("dataset")
    na.add_argument("--table", required=True, help="SCHEMA.TABLE (default schema: public)")
    dsn = na.add_mutually_exclusive_group(required=True)
    dsn.add_argument("--dsn", help="connection string (kept SM4-GCM-encrypted in the node's store)")
    dsn.add_argument("--dsn-file", help="file holding the connection string (read at job time)")
    dsn.add_argument("--dsn-env", help="environment variable holding the connection string (read at job time)")
    na.add_argument("--key", help="key column (default: the metadata's key_column, else id_number)")
    na.add_argument("--meta", help="column metadata TOML")
    na.add_argument("--replace", action="store_true", help="replace an existing dataset of that name")
    na.add_argument("--json", action="store_true")
    na.set_defaults(fn=cmd_node_attach)
    nd = node.add_parser("datasets", help="list this node's datasets")
    nd.add_argument("--config", required=True)
    nd.add_argument("--json", action="store_true")
    nd.set_defaults(fn=cmd_node_datasets)


COMMANDS = {"certs": add_certs, "node": add_node}
