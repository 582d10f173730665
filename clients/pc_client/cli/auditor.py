"""Auditors and regulators: `pc audit verify|export|verify-export` over the tamper-evident
audit logs (read from the parties' data directories, or an exported file)."""
from __future__ import annotations

import pathlib

from pc_client.cli.common import EXIT_REMOTE
from pc_client.report import print_json


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
        with AuditLog.open_existing(path) as log:
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
        print_json(out)
    else:
        for o in out:
            if "file" in o:
                print(f"{o['party']}: exported to {o['file']}")
            else:
                print(f"{o['party']:20} {'ok' if o['ok'] else 'TAMPERED'}  {o['entries']} entries"
                      + "".join(f"\n    - {p}" for p in o["problems"]))
    return EXIT_REMOTE if failed else 0


def add_audit(sub) -> None:
    au = sub.add_parser("audit", help="verify or export the tamper-evident audit logs")
    au.add_argument("action", choices=("verify", "export", "verify-export"))
    au.add_argument("--sandbox", metavar="DIR")
    au.add_argument("--data-dir", metavar="DIR", help="a node's or the coordinator's data directory")
    au.add_argument("--out", help="export: file (one log) or folder")
    au.add_argument("--file", help="verify-export: an exported file")
    au.add_argument("--json", action="store_true")
    au.set_defaults(fn=cmd_audit)


COMMANDS = {"audit": add_audit}
