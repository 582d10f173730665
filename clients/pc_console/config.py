"""console.toml: where the console listens, whom it talks to, and what it may read.

    party = "civil_affairs"           # the agency beside whose node it runs, or "platform"
    listen = "127.0.0.1:0"            # loopback by default; port 0 picks a free port
    data_dir = "console"              # users.db, the console's audit log, its address file
    coordinator = "127.0.0.1:7000"
    node = "127.0.0.1:7001"           # the agency's own node (agency consoles only)
    idle_timeout_minutes = 15
    rules_dir = "rules"               # the rules a caseworker may choose from
    [https]                           # the console's server certificate (pc console cert)
    cert = "https/cert.pem"
    key = "https/key.pem"
    [audit_logs]                      # what an auditor may verify here: party -> audit.db
    civil_affairs = "/srv/pc/civil_affairs/audit.db"

Relative paths are relative to the file's folder.
"""
from __future__ import annotations

import dataclasses
import pathlib
import tomllib

from pc_common.errors import InvalidInput
from pc_common.identity import NAME_RE


@dataclasses.dataclass
class ConsoleConfig:
    party: str
    listen: str
    data_dir: pathlib.Path
    coordinator: str
    https_cert: pathlib.Path
    https_key: pathlib.Path
    node: str = ""
    idle_timeout_minutes: float = 15
    rules_dir: pathlib.Path | None = None
    audit_logs: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)

    @property
    def idle_timeout_s(self) -> float:
        return self.idle_timeout_minutes * 60

    @classmethod
    def load(cls, path) -> "ConsoleConfig":
        path = pathlib.Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidInput(f"no such config file: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path.name}: not valid TOML ({exc})") from None
        base = path.resolve().parent

        def at(value: str) -> pathlib.Path:
            p = pathlib.Path(value)
            return p if p.is_absolute() else base / p

        def need(d: dict, key: str, where: str) -> str:
            if not isinstance(d.get(key), str) or not d[key]:
                raise InvalidInput(f"{where}: missing or empty '{key}'")
            return d[key]

        name = path.name
        party = need(doc, "party", name)
        if party != "platform" and not NAME_RE.match(party):
            raise InvalidInput(f"{name}: party must be an agency name or 'platform'")
        https = doc.get("https") or {}
        try:
            idle = float(doc.get("idle_timeout_minutes", 15))
        except (TypeError, ValueError):
            raise InvalidInput(f"{name}: idle_timeout_minutes must be a number") from None
        if not 0 < idle <= 24 * 60:
            raise InvalidInput(f"{name}: idle_timeout_minutes must be between 0 and 1440")
        logs = doc.get("audit_logs") or {}
        if not isinstance(logs, dict) or not all(isinstance(v, str) for v in logs.values()):
            raise InvalidInput(f"{name}: [audit_logs] maps party names to audit.db paths")
        return cls(party=party, listen=doc.get("listen", "127.0.0.1:0"), data_dir=at(need(doc, "data_dir", name)),
                   coordinator=need(doc, "coordinator", name), node=doc.get("node", ""),
                   https_cert=at(need(https, "cert", f"{name} [https]")),
                   https_key=at(need(https, "key", f"{name} [https]")), idle_timeout_minutes=idle,
                   rules_dir=at(doc["rules_dir"]) if doc.get("rules_dir") else None,
                   audit_logs={k: at(v) for k, v in sorted(logs.items())})


def toml_str(s) -> str:
    """A TOML basic string (JSON's escaping is a subset of TOML's)."""
    import json
    return json.dumps(str(s), ensure_ascii=False)
