"""Data officers and node operators: `pc approvals` (事前审批, through the SDK and the node's
officer API) and `pc policy` (through ``pc_node.admin``; ``pc policy digest`` through the rule
language: the digest a grant pins a rule with; ``pc policy quota`` through the SDK: the node's
grants with their quota use, ``Node.QuotaUsage``)."""
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
                             "created_at": a.created_at, "kind": a.kind, "subjects": a.subjects,
                             "groups": a.groups, "rule": a.rule_id, "reveal": a.reveal,
                             "criteria": [{"name": c.name, "type": c.type, "sources": list(c.sources),
                                           "where": c.where, "threshold": c.threshold} for c in a.criteria]}
                            for a in items])
            else:
                for a in items:
                    print(f"{a.job_id}  {a.state:9} {a.requester:18} {a.purpose:32} {','.join(a.datasets)}")
                    if a.kind:
                        what = f"rule '{a.rule_id}' ({a.reveal}), " if a.rule_id else f"{a.kind}, "
                        groups = f" in {a.groups} group(s)" if a.groups else ""
                        print(f"    {what}{a.subjects} subject(s){groups}")
                    for c in a.criteria:
                        extra = "".join(f"; {x}" for x in (c.threshold, f"where {c.where}" if c.where else "") if x)
                        print(f"    - {c.name}: {c.type} of {', '.join(c.sources)}{extra}")
            return 0
        a = fed.decide(args.job, args.action == "approve", args.reason or "")
        print(f"job {a.job_id}: {a.state}")
    return 0


def cmd_digest(args) -> int:
    """``pc policy digest RULE.toml [--agency A]``: what a grant of A pins the rule with."""
    from pc_common.errors import InvalidInput
    from pc_rules import pinning
    from pc_rules.rules import load_rule
    rule = load_rule(args.rule)
    agencies = [args.agency] if args.agency else [a for a in rule.providers() if a != rule.requester]
    if args.agency and not pinning.criteria_touching(rule, args.agency):
        raise InvalidInput(f"rule '{rule.id}' has no criterion reading data of '{args.agency}'")
    doc = [{"agency": a, "rule": rule.id, "digest": rule.criteria_digest(a),
            "criteria": [c.name for c in pinning.criteria_touching(rule, a)]} for a in agencies]
    if args.json:
        print_json(doc)
        return 0
    for d in doc:
        print(f"# {d['agency']}: criteria {', '.join(d['criteria'])}")
        print(f'rules = [{{ id = "{d["rule"]}", digest = "{d["digest"]}" }}]')
    return 0


def _pins_text(g: dict) -> str:
    parts = []
    if g["rules"]:
        parts.append("rules " + ", ".join(r["id"] for r in g["rules"]))
    if g["thresholds"] or g["max_comparisons"] is not None:
        bounds = ", ".join(f"{k} {b.get('min', '…')}..{b.get('max', '…')}" for k, b in g["thresholds"].items())
        parts.append(f"thresholds {bounds or 'none'} (each column compared at most {g['max_comparisons'] or 1}x)")
    pins = "; ".join(parts) or "no comparisons"
    return f"{pins}; a subject at most {g['max_evaluations_per_subject']}x a {g['evaluation_period']}"


def quota_doc(report, requester: str | None = None) -> list[dict]:
    """``Node.QuotaUsage`` as ``pc policy quota --json`` prints it (counts only)."""
    return [{"dataset": g.dataset, "requester": g.requester, "purposes": list(g.purposes), "suspended": g.suspended,
             "quota": {c.name: {"limit": c.limit, "used": c.used} for c in g.counters},
             "max_evaluations_per_subject": g.max_evaluations_per_subject, "evaluation_period": g.evaluation_period,
             "epsilon": ({"budget": g.epsilon_budget, "spent": g.epsilon_spent, "left": g.epsilon_left}
                         if g.epsilon_budgeted else None)}
            for g in report.grants if not requester or g.requester == requester]


def cmd_quota(args) -> int:
    """``pc policy quota``: the own node's grants with quota limits and use (data officers)."""
    with federation(args) as fed:
        report = fed.quota_usage()
    doc = quota_doc(report, args.requester)
    if args.json:
        print_json({"node": report.node_id, "as_of": report.as_of, "grants": doc})
        return 0
    print(f"node {report.node_id}, as of {report.as_of}")
    for g in doc:
        used = ", ".join(f"{k} {v['used']}/{v['limit']}" for k, v in g["quota"].items())
        eps = g["epsilon"]
        eps_text = f"; epsilon {eps['spent']:g} of {eps['budget']:g} spent a {g['evaluation_period']}" if eps else ""
        print(f"{g['dataset']} <- {g['requester']} ({', '.join(g['purposes'])}): {used}{eps_text}"
              + ("; SUSPENDED" if g["suspended"] else ""))
    return 0


def cmd_policy(args) -> int:
    from pc_common.errors import InvalidInput
    from pc_node import admin
    if args.action == "quota":
        return cmd_quota(args)
    if args.action == "digest":
        if not args.rule:
            raise InvalidInput("pc policy digest needs a rule file: pc policy digest RULE.toml --agency AGENCY")
        return cmd_digest(args)
    if not args.config or not args.requester:
        raise InvalidInput(f"pc policy {args.action} needs --config and --requester")
    cfg = node_config(args)
    if args.action == "unsuspend":
        ok = admin.unsuspend(cfg, args.requester)
        print(f"requester '{args.requester}' " + ("may use this node again" if ok else "was not suspended"))
        return 0
    grants = admin.grants_for(cfg, args.requester)   # raises on a broken file: the operator should know
    doc = [{"dataset": g.dataset, "purposes": list(g.purposes), "columns": g.columns, "approval": g.approval,
            "reveal": g.reveal, "quota": g.quota, "rules": [{"id": r, "digest": d} for r, d in g.rules],
            "thresholds": {k: {n: str(v) for n, v in zip(("min", "max"), b) if v is not None}
                           for k, b in g.thresholds.items()},
            "max_comparisons": g.max_comparisons, "max_evaluations_per_subject": g.max_evaluations_per_subject,
            "evaluation_period": g.evaluation_period} for g in grants]
    if args.json:
        print_json(doc)
    elif not doc:
        print(f"'{args.requester}' may do nothing at node '{cfg.node_id}' (default deny)")
    else:
        for g in doc:
            uses = ", ".join(f"{c} as {u}" for c, u in sorted(g["columns"].items())) or "join on the key only"
            print(f"{g['dataset']}: for {', '.join(g['purposes'])}; {uses}; approval {g['approval']}; "
                  f"reveal up to {g['reveal']}; {_pins_text(g)}")
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
    po = sub.add_parser("policy", help="node operator: explain grants, lift suspensions, digest a rule to pin;"
                                       " data officer: quota use (quota)")
    add_connection(po)
    po.add_argument("action", choices=("check", "unsuspend", "digest", "quota"))
    po.add_argument("rule", nargs="?", help="digest: the rule file (TOML)")
    po.add_argument("--config", help="check, unsuspend: the node's config")
    po.add_argument("--requester", help="check, unsuspend: the requesting agency; quota: only its grants")
    po.add_argument("--agency", help="digest: the providing agency (default: every provider of the rule)")
    po.add_argument("--json", action="store_true")
    po.set_defaults(fn=cmd_policy)


COMMANDS = {"approvals": add_approvals, "policy": add_policy}
