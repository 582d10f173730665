"""`pc console serve|user add|cert`: the web console (``pc_console``) beside a node or the
coordinator.

    pc console cert --certs CERTS --out console/https          # HTTPS certificate from the CA
    pc console user add alice --config console.toml --role officer \\
        --cert CERTS/clients/housing/alice/cert.pem --key …/key.pem --ca CERTS/ca.pem
    pc console serve --config console.toml

``user add`` reads the password from stdin when given ``--password-stdin`` (else makes one and
prints it once) and prints the TOTP secret and its otpauth:// URI for the user's authenticator.
"""
from __future__ import annotations

import pathlib
import sys

from pc_client.report import print_json


def cmd_console(args) -> int:
    from pc_console.config import ConsoleConfig
    from pc_common.errors import InvalidInput
    if args.action == "cert":
        from pc_console import https_cert
        if not args.certs or not args.out:
            raise InvalidInput("pc console cert needs --certs DIR and --out DIR")
        cert, key = https_cert.issue(args.certs, args.out, tuple(args.host or ("localhost", "127.0.0.1")))
        print(f"wrote {cert} and {key}")
        return 0
    if args.action == "user" and (args.what != "add" or not args.role):
        raise InvalidInput("pc console user add USERNAME --config console.toml --role ROLE …")
    if not args.config:
        raise InvalidInput(f"pc console {args.action} needs --config console.toml")
    config = ConsoleConfig.load(pathlib.Path(args.config))
    if args.action == "serve":
        from pc_console.server import serve
        serve(config)
        return 0
    return _user_add(args, config)


def _user_add(args, config) -> int:
    import pyotp
    from pc_common.certs import PartyFiles
    from pc_common.errors import InvalidInput
    from pc_console.users import UserStore, new_password
    if not args.username:
        raise InvalidInput("pc console user add needs a user name")
    files = [args.cert, args.key, args.ca]
    if any(files) and not all(files):
        raise InvalidInput("give all of --cert, --key and --ca, or none (auditors)")
    identity = PartyFiles(*(pathlib.Path(f) for f in files)) if all(files) else None
    generated = not args.password_stdin
    password = new_password() if generated else sys.stdin.readline().rstrip("\n")
    store = UserStore(config.data_dir / "users.db")
    try:
        secret = store.add(args.username, config.party, args.role, password, identity, totp=args.totp)
    finally:
        store.close()
    doc = {"party": config.party, "username": args.username, "roles": args.role,
           "password": password if generated else None, "totp_secret": secret,
           "totp_uri": pyotp.TOTP(secret).provisioning_uri(name=args.username, issuer_name=f"pc console {config.party}")
           if secret else None}
    if args.json:
        print_json(doc)
    else:
        print(f"user {args.username} ({', '.join(args.role)}) added to the console of {config.party}")
        if generated:
            print(f"password: {password}")
        if secret:
            print(f"TOTP secret: {secret}\n  {doc['totp_uri']}")
    return 0


def add_console(sub) -> None:
    c = sub.add_parser("console", help="the web console: serve it, add its users, issue its HTTPS certificate")
    c.add_argument("action", choices=("serve", "user", "cert"))
    c.add_argument("what", nargs="?", choices=("add",), help="user: add")
    c.add_argument("username", nargs="?")
    c.add_argument("--config", help="console.toml")
    c.add_argument("--role", action="append", choices=("analyst", "officer", "operator", "auditor"),
                   help="user add: a role (repeatable)")
    c.add_argument("--cert", help="user add: the user's pc client certificate")
    c.add_argument("--key", help="user add: its key")
    c.add_argument("--ca", help="user add: the federation's CA certificate")
    c.add_argument("--totp", action="store_true", help="user add: a second factor for an analyst too")
    c.add_argument("--password-stdin", action="store_true", help="user add: read the password from stdin")
    c.add_argument("--certs", help="cert: the folder of pc certs init (ca.pem, ca.key)")
    c.add_argument("--out", help="cert: folder to write cert.pem and key.pem")
    c.add_argument("--host", action="append", help="cert: a host name or address (default localhost, 127.0.0.1)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_console)


COMMANDS = {"console": add_console}
