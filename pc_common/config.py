"""Loading the TOML configuration files of nodes and the coordinator."""
from __future__ import annotations

import dataclasses
import pathlib
import tomllib

from pc_common.certs import PartyFiles
from pc_common.errors import InvalidInput


def _load(path: pathlib.Path) -> dict:
    path = pathlib.Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"no such config file: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path.name}: not valid TOML ({exc})") from None


def _path(base: pathlib.Path, value: str) -> pathlib.Path:
    p = pathlib.Path(value)
    return p if p.is_absolute() else (base / p)


def _require(doc: dict, key: str, where: str) -> str:
    if key not in doc or not isinstance(doc[key], str) or not doc[key]:
        raise InvalidInput(f"{where}: missing or empty '{key}'")
    return doc[key]


@dataclasses.dataclass
class CoordinatorConfig:
    listen: str
    data_dir: pathlib.Path
    tls: PartyFiles
    heartbeat_seconds: int = 5
    offline_after_seconds: int = 20
    job_timeout_seconds: int = 3600

    @classmethod
    def load(cls, path: pathlib.Path) -> "CoordinatorConfig":
        doc = _load(path)
        base = pathlib.Path(path).resolve().parent
        tls = doc.get("tls") or {}
        where = f"{pathlib.Path(path).name} [tls]"
        return cls(listen=doc.get("listen", "127.0.0.1:0"),
                   data_dir=_path(base, _require(doc, "data_dir", pathlib.Path(path).name)),
                   tls=PartyFiles(_path(base, _require(tls, "cert", where)), _path(base, _require(tls, "key", where)),
                                  _path(base, _require(tls, "ca", where))),
                   heartbeat_seconds=int(doc.get("heartbeat_seconds", 5)),
                   offline_after_seconds=int(doc.get("offline_after_seconds", 20)),
                   job_timeout_seconds=int(doc.get("job_timeout_seconds", 3600)))


@dataclasses.dataclass
class NodeConfig:
    node_id: str
    listen: str
    coordinator: str
    data_dir: pathlib.Path
    tls: PartyFiles
    sm2_key: pathlib.Path
    x25519_key: pathlib.Path
    policy: pathlib.Path
    master_key_file: pathlib.Path | None = None
    results_ttl_hours: int = 24 * 30
    approval_ttl_hours: int = 72
    #: How long a job may wait for admission (approvals) and run: ``admission_until`` of its spec.
    job_lifetime_hours: int = 7 * 24
    lookup_epoch_days: float = 7                  # lookup OPRF keys rotate this often (per requester)
    lookup_points_per_epoch: int = 1_000_000      # most points one requester may have evaluated per key epoch
    #: Where heavy batches run: "local" or a Dask scheduler address; what may go there (checked at
    #: node start by pc_node.compute, see docs/compute.md): nothing unless compute_trusted.
    compute: str = "local"
    compute_trusted: bool = False
    compute_secrets: tuple | None = None          # None: every allowed kind when trusted, else none
    compute_tls: tuple | None = None              # (ca, cert, key) for a tls:// scheduler

    @classmethod
    def load(cls, path: pathlib.Path) -> "NodeConfig":
        doc = _load(path)
        name = pathlib.Path(path).name
        base = pathlib.Path(path).resolve().parent
        tls = doc.get("tls") or {}
        where = f"{name} [tls]"
        mk = doc.get("master_key_file")
        ctls = doc.get("compute_tls")
        if ctls is not None:
            w = f"{name} [compute_tls]"
            ctls = (_path(base, _require(ctls, "ca", w)), _path(base, _require(ctls, "cert", w)),
                    _path(base, _require(ctls, "key", w))) if isinstance(ctls, dict) else ctls
        return cls(node_id=_require(doc, "node_id", name), listen=doc.get("listen", "127.0.0.1:0"),
                   coordinator=_require(doc, "coordinator", name),
                   data_dir=_path(base, _require(doc, "data_dir", name)),
                   tls=PartyFiles(_path(base, _require(tls, "cert", where)), _path(base, _require(tls, "key", where)),
                                  _path(base, _require(tls, "ca", where))),
                   sm2_key=_path(base, _require(tls, "sm2_key", where)),
                   x25519_key=_path(base, _require(tls, "x25519_key", where)),
                   policy=_path(base, doc.get("policy", "policy.toml")),
                   master_key_file=_path(base, mk) if mk else None,
                   results_ttl_hours=int(doc.get("results_ttl_hours", 24 * 30)),
                   approval_ttl_hours=int(doc.get("approval_ttl_hours", 72)),
                   job_lifetime_hours=int(doc.get("job_lifetime_hours", 7 * 24)),
                   lookup_epoch_days=float(doc.get("lookup_epoch_days", 7)),
                   lookup_points_per_epoch=int(doc.get("lookup_points_per_epoch", 1_000_000)),
                   compute=doc.get("compute", "local"), compute_trusted=doc.get("compute_trusted", False),
                   compute_secrets=doc.get("compute_secrets"), compute_tls=ctls)


def write_address(data_dir: pathlib.Path, listen: str, port: int) -> None:
    """Record the bound host:port so the sandbox and clients can find a server on port 0."""
    host = listen.rsplit(":", 1)[0]
    tmp = pathlib.Path(data_dir) / "address.tmp"
    tmp.write_text(f"{host}:{port}\n")
    tmp.replace(pathlib.Path(data_dir) / "address")
