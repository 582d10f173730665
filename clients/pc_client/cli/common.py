"""What the role modules of the `pc` command share: exit codes and the federation options."""
from __future__ import annotations

import argparse
import pathlib

EXIT_USER, EXIT_REMOTE = 2, 1


def add_connection(p: argparse.ArgumentParser) -> None:
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
    """The SDK's ``Federation`` named by the options of ``add_connection``."""
    from pc_client.sdk import Federation
    from pc_common.certs import PartyFiles
    from pc_common.errors import InvalidInput
    if args.sandbox:
        from pc_client.sandbox import connect
        return connect(args.sandbox, args.user or default_user)
    missing = [n for n in ("coordinator", "cert", "key", "ca") if not getattr(args, n)]
    if missing:
        raise InvalidInput("give --sandbox DIR, or all of --coordinator, --cert, --key, --ca "
                           f"(missing: {', '.join('--' + m for m in missing)})")
    return Federation(args.coordinator, PartyFiles(pathlib.Path(args.cert), pathlib.Path(args.key),
                                                   pathlib.Path(args.ca)), node=args.node)


def default_user(agency: str | None) -> str | None:
    """The sandbox identity for a command run on behalf of ``agency``."""
    return f"analyst@{agency}" if agency else None


def node_config(args):
    """The node config named by ``--config``."""
    from pc_common.config import NodeConfig
    return NodeConfig.load(pathlib.Path(args.config))
