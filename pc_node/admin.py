"""The node's public API for its operator: datasets, grants and suspensions, on the node's
data directory (the node need not be running; a running one sees the changes: it reads the
store per request and re-reads the policy file when it changes).

The `pc node …` / `pc policy …` commands and the sandbox use this module and nothing below
it (store, importer, policy, governance), so the node's internals can change behind it::

    with NodeAdmin(NodeConfig.load(path)) as node:
        if not node.imported_unchanged(csv):
            node.import_dataset(csv, replace=True)
    write_grants(config, [Grant("vehicles", "civil_affairs", ("data_matching",), {"id_number": "join_key"})])
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import tomllib

from pc_common.config import NodeConfig
from pc_common.errors import InvalidInput, NotFound
from pc_common.identity import check_name
from pc_node.governance import Governance
from pc_node.importer import ImportReport, detect_key_column, import_file
from pc_node.policy import DEFAULT_QUOTA, Grant, Policy, parse_policy, pins_toml
from pc_node.runtime import open_store
from pc_node.sources import Attachment, PostgresSource, pg_column_type
from pc_rules.metadata import ColumnMeta, DatasetMeta, load_metadata, parse_metadata
from pc_rules.where import COLUMN_NAME_RE

log = logging.getLogger(__name__)

__all__ = ["NodeAdmin", "Grant", "ImportReport", "AttachReport", "attach_dataset", "DatasetMeta", "ColumnMeta", "import_dataset", "datasets",
           "key_column_of", "source_fingerprint", "grants_toml", "write_grants", "grants_for", "unsuspend"]

POSTGRES_SUFFIX = ".postgres.toml"   # the sandbox: DIR/<agency>/<dataset>.postgres.toml attaches a table
SOURCE_KIND = "importsource"     # store blob kind: the fingerprint of the file a dataset came from
DEFAULT_KEY_COLUMN = "id_number"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _metadata_path(path: pathlib.Path, metadata) -> pathlib.Path:
    return pathlib.Path(metadata) if metadata else path.with_suffix(".toml")


def source_fingerprint(path, metadata=None) -> bytes:
    """Size and modification times of a data file and its metadata file: what "unchanged" means."""
    path = pathlib.Path(path)
    st = path.stat()
    meta = _metadata_path(path, metadata)
    return json.dumps([st.st_size, st.st_mtime_ns, meta.stat().st_mtime_ns if meta.exists() else 0]).encode()


def key_column_of(path, metadata=None, detect: bool = False) -> str:
    """The key column an import of ``path`` uses: the metadata's ``key_column``, else (with
    ``detect``) the column holding identity numbers, else ``id_number``."""
    path = pathlib.Path(path)
    declared = load_metadata(_metadata_path(path, metadata), default_key="").key_column
    if declared:
        return declared
    return (detect_key_column(path) if detect else None) or DEFAULT_KEY_COLUMN


class NodeAdmin:
    """Operator access to one node's datasets (opens its encrypted store; close it after)."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self._store = open_store(config)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "NodeAdmin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- datasets ----------------------------------------------------------------------------
    def datasets(self) -> list[DatasetMeta]:
        return self._store.datasets()

    def dataset(self, name: str) -> DatasetMeta:
        return self._store.dataset(name)

    def import_dataset(self, path, dataset: str | None = None, metadata=None, skip_invalid: bool = False,
                       rejects=None, replace: bool = False, key_column: str | None = None,
                       rejects_with_values: bool = True, progress=None) -> ImportReport:
        """Import a CSV or Parquet file (all-or-nothing unless ``skip_invalid``; see ``importer``)
        and remember the file's fingerprint for :meth:`imported_unchanged`. ``progress``: True
        for a bar on stderr, or a callable given the fraction done."""
        path = pathlib.Path(path)
        source = source_fingerprint(path, metadata) if path.exists() else None   # before reading it
        rep = import_file(self._store, path, dataset=dataset,
                          metadata=pathlib.Path(metadata) if metadata else None, skip_invalid=skip_invalid,
                          rejects=pathlib.Path(rejects) if rejects else None, replace=replace,
                          key_column=key_column, rejects_with_values=rejects_with_values, progress=progress)
        if source is not None:
            self._store.put_blob(SOURCE_KIND, rep.dataset, source)
        return rep

    def attach_dataset(self, dataset: str, table: str, **options) -> "AttachReport":
        """Attach a PostgreSQL table as dataset ``dataset``, read at job time (``pc_node.sources``):
        exactly one of ``dsn`` (kept encrypted in the store), ``dsn_file``, ``dsn_env``; optional
        ``key_column``, ``metadata`` (TOML), ``replace``."""
        return _attach(self, dataset, table, **options)

    def attach_from_file(self, path, replace: bool = True) -> "AttachReport":
        """Attach the table a ``<dataset>.postgres.toml`` describes (the sandbox's way): keys
        ``table``, one of ``dsn`` / ``dsn_file`` / ``dsn_env``, optional ``key``, and the
        metadata keys of rules.md ("Dataset metadata": ``description``, ``[columns.<name>]``)."""
        path = pathlib.Path(path)
        name = path.name.removesuffix(POSTGRES_SUFFIX)
        try:
            spec = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise InvalidInput(f"{path.name}: not a readable TOML file ({type(e).__name__})") from None
        allowed = ("table", "dsn", "dsn_file", "dsn_env", "key", "description", "columns")
        unknown = [k for k in spec if k not in allowed]
        if unknown or not isinstance(spec.get("table"), str):
            raise InvalidInput(f"{path.name}: needs table = \"SCHEMA.TABLE\" and one of dsn, dsn_file, dsn_env "
                               f"(allowed keys: {', '.join(allowed)})")
        key = spec.get("key")
        declared = parse_metadata("\n".join(f"{_toml_key(k)} = {_toml_value(spec[k])}"
                                            for k in ("description", "columns") if k in spec),
                                  path.name, name=name, default_key=key or DEFAULT_KEY_COLUMN)
        dsn_file = spec.get("dsn_file")
        if dsn_file:
            dsn_file = path.parent / dsn_file
        return _attach(self, name, spec["table"], dsn=spec.get("dsn"), dsn_file=dsn_file, dsn_env=spec.get("dsn_env"),
                       key_column=key, declared=declared, replace=replace)

    def imported_unchanged(self, path, dataset: str | None = None, metadata=None) -> bool:
        """Whether dataset ``dataset`` (default: the file name) was imported from ``path`` as it is now."""
        path = pathlib.Path(path)
        name = dataset or path.stem
        if not self._store.has_blob(SOURCE_KIND, name):
            return False
        try:
            self._store.dataset(name)
        except NotFound:
            return False
        return self._store.get_blob(SOURCE_KIND, name) == source_fingerprint(path, metadata)


@dataclasses.dataclass
class AttachReport:
    dataset: str
    table: str
    rows: int                  # rows with a valid identifier
    skipped: int               # rows skipped for an invalid identifier (count only)
    columns: list[ColumnMeta]
    warnings: list[str]


def _attach(node: NodeAdmin, dataset: str, table: str, *, dsn: str | None = None, dsn_file=None,
            dsn_env: str | None = None, key_column: str | None = None, metadata=None,
            replace: bool = False, declared: DatasetMeta | None = None) -> AttachReport:
    name = check_name("dataset", dataset)
    given = [x for x in (dsn, dsn_file, dsn_env) if x]
    if len(given) != 1:
        raise InvalidInput("give exactly one of --dsn, --dsn-file, --dsn-env")
    schema, _, tbl = table.rpartition(".")
    schema = schema or "public"
    if not tbl or "." in schema:
        raise InvalidInput(f"--table must be TABLE or SCHEMA.TABLE, not '{table[:60]}'")
    meta_name = pathlib.Path(metadata).name if metadata else f"{dataset}{POSTGRES_SUFFIX}"
    if declared is None:
        declared = load_metadata(pathlib.Path(metadata) if metadata else None,
                                 default_key=key_column or DEFAULT_KEY_COLUMN)
    key = key_column or declared.key_column
    att = Attachment(dataset=name, schema=schema, table=tbl, key=key, columns=[], dsn=dsn or "",
                     dsn_file=str(pathlib.Path(dsn_file).resolve()) if dsn_file else "", dsn_env=dsn_env or "")
    src = PostgresSource(att)
    info = src.inspect()
    described = {c.name: c for c in declared.columns}
    for col in described:
        if col not in info.columns:
            raise InvalidInput(f"{meta_name}: describes column '{col}' which table "
                               f"{att.qualified} does not have")
    columns = []
    for col, pg_type in info.columns.items():
        if col == key:
            continue
        if not COLUMN_NAME_RE.match(col):
            raise InvalidInput(f"table {att.qualified}: column name '{col[:40]}' is not allowed "
                               "(letters, digits, underscore)")
        d = described.get(col) or ColumnMeta(col, "")
        columns.append(dataclasses.replace(d, type=d.type or pg_column_type(pg_type)))
    att.columns = [c.name for c in columns]
    att.key_type = re.sub(r"\(.*\)", "", info.columns[key]).strip()
    ids = src.keys()
    if not ids:
        raise InvalidInput(f"table {att.qualified}: no row with a valid identifier in '{key}'")
    key_meta = declared.key_meta or ColumnMeta(key, "text")
    key_meta = dataclasses.replace(key_meta, description=key_meta.description or "Resident identity number (GB 11643)")
    meta = DatasetMeta(name=name, key_column=key, description=declared.description, columns=columns,
                       key_meta=key_meta)
    warnings = []
    if info.writable:
        warnings.append(f"the node's database role can write to {att.qualified}; "
                        "grant it SELECT only")
    if not info.key_indexed:
        warnings.append(f"key column '{key}' of {att.qualified} has no index; lookups by identifier "
                        f"will scan the table (CREATE INDEX ON {att.qualified} ({key}))")
    for w in warnings:
        log.warning("attach %s: %s", name, w)
    node._store.attach_dataset(meta, json.dumps(dataclasses.asdict(att)).encode(), len(ids), replace=replace)
    node._store.delete_blobs(SOURCE_KIND, name)
    return AttachReport(name, att.qualified, len(ids), src.skipped, columns, warnings)


def attach_dataset(config: NodeConfig, dataset: str, table: str, **options) -> AttachReport:
    """One attachment at the node of ``config``; ``options`` as for :meth:`NodeAdmin.attach_dataset`."""
    with NodeAdmin(config) as node:
        return node.attach_dataset(dataset, table, **options)


def import_dataset(config: NodeConfig, path, **options) -> ImportReport:
    """One import into the node of ``config``; ``options`` as for :meth:`NodeAdmin.import_dataset`."""
    with NodeAdmin(config) as node:
        return node.import_dataset(path, **options)


def datasets(config: NodeConfig) -> list[DatasetMeta]:
    with NodeAdmin(config) as node:
        return node.datasets()


# ----- grants (policy.toml) ------------------------------------------------------------------------
def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k, ensure_ascii=False)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _toml_value(v) -> str:
    """A parsed TOML value written back as TOML (inline tables), for ``parse_metadata``."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return _toml_str(str(v))


def grants_toml(grants: list[Grant], comment: str = "") -> str:
    """Grants as a policy file (quotas only where they differ from the defaults)."""
    parts = [f"# {line}\n" for line in comment.splitlines()] if comment else []
    for g in grants:
        text = (f"[[grants]]\ndataset = {_toml_str(g.dataset)}\nrequester = {_toml_str(g.requester)}\n"
                f"purposes = [{', '.join(_toml_str(p) for p in g.purposes)}]\n"
                f"approval = {_toml_str(g.approval)}\nreveal = {_toml_str(g.reveal)}\n{pins_toml(g)}[grants.columns]\n"
                + "".join(f"{_toml_key(c)} = {_toml_str(u)}\n" for c, u in g.columns.items()))
        quota = {k: v for k, v in g.quota.items() if DEFAULT_QUOTA.get(k) != v}
        if quota:
            text += "[grants.quota]\n" + "".join(f"{_toml_key(k)} = {int(v)}\n" for k, v in quota.items())
        parts.append(text)
    return "\n".join(parts)


def write_grants(target: NodeConfig | str | os.PathLike, grants: list[Grant], comment: str = "") -> pathlib.Path:
    """Replace the node's policy file (``target``: its config, or the file) with ``grants``.

    The text is checked with the node's own parser before it replaces the file, atomically:
    a running node never reads a half-written or invalid policy."""
    path = pathlib.Path(target.policy if isinstance(target, NodeConfig) else target)
    text = grants_toml(grants, comment)
    parse_policy(text, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def grants_for(config: NodeConfig, requester: str) -> list[Grant]:
    """What ``requester`` may do at this node; a broken policy file raises (the operator should know)."""
    return [g for g in Policy(config.policy).reload() if g.requester == requester]


def unsuspend(config: NodeConfig, requester: str) -> bool:
    """Lift a quota suspension; False when ``requester`` was not suspended."""
    path = config.data_dir / "governance.db"
    if not path.exists():
        return False      # a node that never ran has suspended no one
    gov = Governance(path, config.approval_ttl_hours)
    try:
        return gov.unsuspend(requester)
    finally:
        gov.close()
