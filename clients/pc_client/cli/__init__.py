"""The `pc` command line. Run `pc --help` or `pc COMMAND --help`.

One module per role: ``node`` (certificates, node serve/import/datasets), ``coordinator``
(serve, directory), ``analyst`` (catalog, verify, psi, lookup, query, jobs, results), ``officer``
(approvals, policy), ``auditor`` (audit), ``console`` (the web console), ``sandbox`` (sandbox, demo). Each exports
``COMMANDS``: command name -> a function adding its parser. Client work goes through the SDK
(``pc_client.sdk``), node and coordinator work through their public entry points
(``pc_node.server.serve``, ``pc_node.admin``, ``pc_coordinator.server.serve``); output helpers
are in ``pc_client.report``.

User errors print one line on stderr and exit non-zero; no tracebacks.
"""
from __future__ import annotations

import argparse
import logging
import sys

import grpc

from pc_client.cli import analyst, auditor, console, coordinator, node, officer, sandbox
from pc_client.cli.common import EXIT_REMOTE, EXIT_USER
from pc_common.errors import PcError

__all__ = ["main", "build_parser", "EXIT_USER", "EXIT_REMOTE"]

# The order of `pc --help`.
ORDER = ("certs", "coordinator", "node", "catalog", "nodes", "sandbox", "verify", "psi", "lookup", "query", "jobs",
         "results", "approvals", "policy", "audit", "console", "demo")
ROLES = (node, coordinator, analyst, officer, auditor, console, sandbox)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc", description="Privacy-computing federated queries: private set "
                                "intersection and homomorphic aggregation between agencies (数据可用不可见).")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {name: add for role in ROLES for name, add in role.COMMANDS.items()}
    if set(commands) != set(ORDER):
        raise RuntimeError(f"pc commands out of step with ORDER: {sorted(set(commands) ^ set(ORDER))}")
    for name in ORDER:
        commands[name](sub)
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
