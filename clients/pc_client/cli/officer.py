"""Data officers and node operators: `pc approvals` (事前审批, through the SDK and the node's
officer API) and `pc policy` (through ``pc_node.admin``)."""
from __future__ import annotations

from pc_client.cli.common import add_connection, federation, node_config
from pc_client.report import print_json


def cmd_approvals(args) -> int:
    with federation(args) as fed:
        if args.action == "list":
            items = fed.approvals()
            if args.json:
                print_json([{"job_id": a.job_id, "requester": a.requester, "purpose": a.purpose,
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
    from pc_node import admin
    cfg = node_config(args)
    if args.action == "unsuspend":
        ok = admin.unsuspend(cfg, args.requester)
        print(f"requester '{args.requester}' " + ("may use this node again" if ok else "was not suspended"))
        return 0
    grants = admin.grants_for(cfg, args.requester)   # raises on a broken file: the operator should know
    doc = [{"dataset": g.dataset, "purposes": list(g.purposes), "columns": g.columns, "approval": g.approval,
            "reveal": g.reveal, "quota": g.quota} for g in grants]
    if args.json:
        print_json(doc)
    elif not doc:
        print(f"'{args.requester}' may do nothing at node '{cfg.node_id}' (default deny)")
    else:
        for g in doc:
            uses = ", ".join(f"{c} as {u}" for c, u in sorted(g["columns"].items())) or "join on the key only"
            print(f"{g['dataset']}: for {', '.join(g['purposes'])}; {uses}; approval {g['approval']}; "
                  f"reveal up to {g['reveal']}")
    return 0


def add_approvals(sub) -> None:
    ap = sub.add_parser("approvals", help="data officer: pending approvals (事前审批)")
    add_connection(ap)
    ap.add_argument("action", choices=("list", "approve", "reject"))
    ap.add_argument("job", nargs="?")
    ap.add_argument("--reason")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(fn=cmd_approvals)


def add_policy(sub) -> None:
    po = sub.add_parser("policy", help="node operator: explain grants, lift suspensions")
    po.add_argument("action", choices=("check", "unsuspend"))
    po.add_argument("--config", required=True, help="the node's config")
    po.add_argument("--requester", required=True)
    po.add_argument("--json", action="store_true")
    po.set_defaults(fn=cmd_policy)


COMMANDS = {"approvals": add_approvals, "policy": add_policy}
