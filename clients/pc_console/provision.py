"""Consoles for a local sandbox (``pc sandbox up DIR --console``): one beside each agency's node
and one beside the coordinator ("platform"), each with its HTTPS certificate from the sandbox
CA, its console.toml and a console user for each sandbox identity — plus an auditor per
console, who reads the audit logs there (an agency's own; all of them at the platform, as
``pc audit verify --sandbox`` does).

``provision`` writes everything and returns, per party, the config to serve and the users with
their passwords and TOTP secrets (for DIR/.sandbox/console-users.json, 0600).
"""
from __future__ import annotations

import json
import os
import pathlib

from pc_common import certs
from pc_console import https_cert
from pc_console.config import ConsoleConfig, toml_str
from pc_console.users import UserStore, new_password

USERS_FILE = "console-users.json"


def _users_for(party: str) -> list[tuple[str, str, str | None]]:
    """(username, role, sandbox identity user) of a party's console."""
    if party == "platform":
        return [("operator", "operator", "operator"), ("auditor", "auditor", None)]
    return [("analyst", "analyst", "analyst"), ("officer", "officer", "officer"), ("auditor", "auditor", None)]


def write_config(folder: pathlib.Path, party: str, coordinator: str, node: str, audit_logs: dict[str, pathlib.Path],
                 rules_dir: pathlib.Path | None) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"party = {toml_str(party)}", 'listen = "127.0.0.1:0"', f"data_dir = {toml_str(folder)}",
             f"coordinator = {toml_str(coordinator)}", "idle_timeout_minutes = 15"]
    if node:
        lines.append(f"node = {toml_str(node)}")
    if rules_dir is not None:
        lines.append(f"rules_dir = {toml_str(rules_dir)}")
    lines += ["", "[https]", f"cert = {toml_str(folder / 'https' / 'cert.pem')}",
              f"key = {toml_str(folder / 'https' / 'key.pem')}", "", "[audit_logs]"]
    lines += [f"{p} = {toml_str(path)}" for p, path in sorted(audit_logs.items())]
    path = folder / "console.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def provision(root: pathlib.Path, certs_dir: pathlib.Path, coordinator: str, nodes: dict[str, str],
              rules_dir: pathlib.Path | None) -> tuple[dict[str, pathlib.Path], list[dict]]:
    """Write the consoles of a sandbox rooted at ``root`` (DIR/.sandbox); returns
    ({party: console.toml}, users as written to console-users.json)."""
    all_logs = {"coordinator": root / "coordinator" / "audit.db", **{a: root / a / "audit.db" for a in nodes}}
    configs, users = {}, []
    for party in ["platform", *nodes]:
        folder = root / ("coordinator" if party == "platform" else party) / "console"
        https_cert.issue(certs_dir, folder / "https", name=f"pc console {party}")
        logs = all_logs if party == "platform" else {party: all_logs[party]}
        configs[party] = write_config(folder, party, coordinator, nodes.get(party, ""), logs,
                                      rules_dir if party != "platform" else None)
        config = ConsoleConfig.load(configs[party])
        store = UserStore(config.data_dir / "users.db")
        try:
            for username, role, ident in _users_for(party):
                files = certs.client_files(certs_dir, party, ident) if ident else None
                password = new_password()
                secret = store.add(username, party, [role], password, files)
                users.append({"party": party, "username": username, "password": password, "totp_secret": secret,
                              "roles": [role]})
        finally:
            store.close()
    return configs, users


def write_users(root: pathlib.Path, users: list[dict]) -> pathlib.Path:
    path = root / USERS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(users, fh, indent=2, ensure_ascii=False)
    os.chmod(path, 0o600)
    return path
