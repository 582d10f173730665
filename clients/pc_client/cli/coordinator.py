"""`pc coordinator serve` and `pc nodes`: the platform operator (大数据局)."""
from __future__ import annotations

import pathlib

from pc_client.cli.common import add_connection, federation
from pc_client.report import print_json


def cmd_coordinator_serve(args) -> int:
    from pc_common.config import CoordinatorConfig
    from pc_coordinator.server import serve
    serve(CoordinatorConfig.load(pathlib.Path(args.config)))
    return 0


def cmd_nodes(args) -> int:
    with federation(args) as fed:
        nodes = fed.nodes()
    if args.json:
        print_json([{"node_id": n.node_id, "address": n.address, "online": n.online, "datasets": n.datasets,
                     "last_seen": n.last_seen} for n in nodes])
    else:
        for n in nodes:
            print(f"{n.node_id:20} {'online ' if n.online else 'OFFLINE'} {n.address:22} {n.datasets} dataset(s)")
    return 0


def add_coordinator(sub) -> None:
    co = sub.add_parser("coordinator", help="run the coordinator").add_subparsers(dest="action", required=True)
    cs = co.add_parser("serve", help="serve until SIGTERM")
    cs.add_argument("--config", required=True)
    cs.set_defaults(fn=cmd_coordinator_serve)


def add_nodes(sub) -> None:
    c = sub.add_parser("nodes", help="nodes in the directory and whether they are online")
    add_connection(c)
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(fn=cmd_nodes)


COMMANDS = {"coordinator": add_coordinator, "nodes": add_nodes}
