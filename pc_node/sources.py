"""Where a dataset's rows come from at job time: the ``DatasetSource`` seam.

Two implementations answer the same two reads the steps make (through ``NodeStore.keys`` and
``NodeStore.rows_for_keys``, so steps never know which one they talk to):

* the node's own SQLite store (imported datasets; ``pc_node.store``), and
* :class:`PostgresSource`, a table of an existing PostgreSQL database attached with
  ``pc node attach`` and read at job time through psycopg 3: a server-side cursor in batches,
  only the dataset's columns, the key column looked up with ``WHERE key = ANY(%s)``.

Identifiers are normalised and validated on the fly (``pc_node.idnum``); invalid rows are
skipped and counted, never reported by value. The attachment record (table, key, column map
and a DSN *reference*: ``dsn_file`` or ``dsn_env``, or a plain ``dsn`` kept only inside the
node's SM4-GCM-encrypted store) never reaches the catalog, a log line or an error message:
errors name the dataset and the table, never the DSN.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import logging
import os
import pathlib
import re
from typing import Iterator, Protocol, Sequence

from pc_common.errors import FailedPrecondition, InvalidInput
from pc_node import idnum

log = logging.getLogger(__name__)

__all__ = ["DatasetSource", "PostgresSource", "Attachment", "TableInfo", "pg_column_type"]

BATCH = 10_000
_PG_TYPES = {
    "smallint": "integer", "integer": "integer", "bigint": "integer",
    "numeric": "decimal", "real": "decimal", "double precision": "decimal",
    "date": "date",
}
# Key column types whose index a text array would bypass, and the cast that keeps it usable.
_ARRAY_CASTS = {"character": "::bpchar[]", "bpchar": "::bpchar[]", "character varying": "::varchar[]",
                "text": "::text[]"}
_SECRETISH = re.compile(r"(password|passwd|pwd)\s*=\s*\S+", re.I)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


class DatasetSource(Protocol):
    """The reads a step makes of one dataset."""

    def keys(self) -> list[str]:
        """Every valid normalised identifier, in row order."""

    def rows_for_keys(self, keys: Sequence[str]) -> dict[str, list[list[str]]]:
        """identifier → rows (values as text, in the dataset's column order) for ``keys``."""


def pg_column_type(pg_type: str) -> str:
    """A PostgreSQL type (``format_type`` without modifiers) as a rule-language column type."""
    return _PG_TYPES.get(re.sub(r"\(.*\)", "", pg_type).strip(), "text")


@dataclasses.dataclass
class Attachment:
    """What the node keeps (encrypted) about an attached table."""
    dataset: str
    schema: str
    table: str
    key: str
    columns: list[str]                 # the non-key columns, in the dataset's order
    dsn: str = ""                      # only when given on the command line; encrypted at rest
    dsn_file: str = ""
    dsn_env: str = ""
    key_type: str = ""                 # the key column's PostgreSQL type (records from before: "")

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def resolve_dsn(self) -> str:
        if self.dsn:
            return self.dsn
        if self.dsn_file:
            try:
                return pathlib.Path(self.dsn_file).read_text(encoding="utf-8").strip()
            except OSError:
                raise FailedPrecondition(f"dataset '{self.dataset}': cannot read its DSN file "
                                         f"{self.dsn_file}") from None
        if self.dsn_env:
            value = os.environ.get(self.dsn_env, "").strip()
            if not value:
                raise FailedPrecondition(f"dataset '{self.dataset}': environment variable "
                                         f"{self.dsn_env} (its DSN) is not set")
            return value
        raise InvalidInput(f"dataset '{self.dataset}': no DSN (give --dsn, --dsn-file or --dsn-env)")


def _scrub(text: str, dsn: str) -> str:
    """One line of a driver message with anything password-like removed."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"
    if dsn:
        line = line.replace(dsn, "<dsn>")
    line = _URI_PASSWORD.sub(r"\1***@", line)
    return _SECRETISH.sub(r"\1=***", line)[:200]


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    return str(v)


@dataclasses.dataclass
class TableInfo:
    columns: dict[str, str]            # name → PostgreSQL type, in table order
    writable: bool
    key_indexed: bool


class PostgresSource:
    """An attached PostgreSQL table, read anew at every call (no copy is kept)."""

    def __init__(self, att: Attachment):
        self.att = att
        self.skipped = 0               # invalid identifiers skipped by the last full read

    # ----- connection and inspection ----------------------------------------------------------------
    def _connect(self):
        import psycopg
        dsn = self.att.resolve_dsn()
        try:
            return psycopg.connect(dsn, connect_timeout=10, autocommit=False)
        except psycopg.Error as e:
            raise InvalidInput(f"dataset '{self.att.dataset}': cannot connect to PostgreSQL: "
                               f"{_scrub(str(e), dsn)}") from None
        except Exception:    # noqa: BLE001 - a malformed DSN raises ProgrammingError/ValueError
            raise InvalidInput(f"dataset '{self.att.dataset}': the DSN is not a valid PostgreSQL "
                               "connection string") from None

    def _run(self, fn):
        """Run ``fn(conn)`` on a fresh connection; driver errors become one clear line."""
        import psycopg
        conn = self._connect()
        try:
            with conn:
                return fn(conn)
        except psycopg.Error as e:
            raise FailedPrecondition(f"dataset '{self.att.dataset}': reading PostgreSQL table "
                                     f"{self.att.qualified} failed: {_scrub(str(e), '')}") from None
        finally:
            conn.close()

    def inspect(self) -> TableInfo:
        """The table's columns and types, and whether this role may write it and the key is indexed."""
        def go(conn):
            cur = conn.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r','v','m','p','f')",
                (self.att.schema, self.att.table))
            row = cur.fetchone()
            if row is None:
                raise FailedPrecondition(f"dataset '{self.att.dataset}': table {self.att.qualified} "
                                         "not found in the database")
            oid = row[0]
            cols = {name: typ for name, typ in conn.execute(
                "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
                " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,))}
            if self.att.key not in cols:
                raise FailedPrecondition(f"dataset '{self.att.dataset}': key column '{self.att.key}' not in "
                                         f"table {self.att.qualified} (columns: {', '.join(cols)})")
            writable = conn.execute("SELECT has_table_privilege(%s::oid, 'INSERT,UPDATE,DELETE,TRUNCATE')",
                                    (oid,)).fetchone()[0]
            indexed = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND a.attname = %s)",
                (oid, self.att.key)).fetchone()[0]
            return TableInfo(cols, bool(writable), bool(indexed))
        return self._run(go)

    def _select(self, where: str = "", columns: Sequence[str] | None = None):
        """SELECT key, columns… FROM table (all the dataset's columns, or ``columns``); ``where``:
        "key" (= ANY(%s), by the index) or "messy" (identifiers not stored in normal form:
        blanks, lower-case x — a scan of the key column)."""
        from psycopg import sql
        cols = [self.att.key, *(self.att.columns if columns is None else columns)]
        q = sql.SQL("SELECT {} FROM {}.{}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            sql.Identifier(self.att.schema), sql.Identifier(self.att.table))
        key = sql.Identifier(self.att.key)
        if where == "key":
            # The array in the key column's own type, so the comparison is the one its index
            # serves (psycopg sends strings untyped and PostgreSQL infers it; a typed text[]
            # against char(18) would compare as text and scan the table).
            cast = _ARRAY_CASTS.get(self.att.key_type, "")
            q = q + sql.SQL(" WHERE {} = ANY(%s" + cast + ")").format(key)
        elif where == "messy":
            q = q + sql.SQL(" WHERE {} IS NOT NULL AND {} !~ '^[0-9]{{17}}[0-9X]$'").format(key, key)
        return q

    # ----- the DatasetSource reads ------------------------------------------------------------------
    def _key_batches(self) -> Iterator[list[tuple]]:
        """The key column in batches through a server-side cursor (bounded memory)."""
        from psycopg import sql
        conn = self._connect()
        try:
            with conn, conn.cursor(name="pc_read") as cur:
                cur.itersize = BATCH
                cur.execute(sql.SQL("SELECT {} FROM {}.{}").format(
                    sql.Identifier(self.att.key), sql.Identifier(self.att.schema), sql.Identifier(self.att.table)))
                while True:
                    rows = cur.fetchmany(BATCH)
                    if not rows:
                        break
                    yield rows
        finally:
            conn.close()

    def keys(self) -> list[str]:
        import psycopg
        out: list[str] = []
        skipped = 0
        try:
            for rows in self._key_batches():
                norm, reasons = idnum.validate_many(r[0] if isinstance(r[0], str) else "" for r in rows)
                for n, why in zip(norm, reasons):
                    if why is None:
                        out.append(n)
                    else:
                        skipped += 1
        except psycopg.Error as e:
            raise FailedPrecondition(f"dataset '{self.att.dataset}': reading PostgreSQL table "
                                     f"{self.att.qualified} failed: {_scrub(str(e), '')}") from None
        self.skipped = skipped
        if skipped:
            log.warning("dataset %s: %d row(s) with an invalid identifier skipped", self.att.dataset, skipped)
        return out

    def rows_for_keys(self, keys: Sequence[str], columns: Sequence[str] | None = None) -> dict[str, list[list[str]]]:
        """By the key column's index for identifiers stored in normal form, plus the rows whose
        identifier is not stored normalised (found by a pattern; normalised here). With
        ``columns`` only those are read; the others are "" in the rows returned."""
        wanted = set(keys)
        found: dict[str, list[list[str]]] = {}
        read = self.att.columns if columns is None else [c for c in self.att.columns if c in set(columns)]
        where = [self.att.columns.index(c) for c in read]
        width = len(self.att.columns)

        def take(rows) -> None:
            for row in rows:
                if not isinstance(row[0], str):
                    continue
                k = idnum.normalise(row[0])
                if k in wanted:
                    values = [""] * width
                    for j, v in zip(where, row[1:]):
                        values[j] = _text(v)
                    found.setdefault(k, []).append(values)

        def go(conn):
            probe = sorted(wanted)
            q = self._select("key", read)
            for i in range(0, len(probe), BATCH):
                take(conn.execute(q, (probe[i:i + BATCH],)))
            take(conn.execute(self._select("messy", read)))
        self._run(go)
        return found

    def stamp(self) -> tuple:
        """A snapshot that changes whenever the table's rows do: its oid and file, row count and
        newest ``xmin`` (an insert, update, delete, truncate or reload each move one of them).
        Views and foreign tables have no ``xmin``: a fresh value each time (always re-read)."""
        from psycopg import sql

        def go(conn):
            rel = conn.execute(
                "SELECT c.oid, c.relfilenode, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s", (self.att.schema, self.att.table)).fetchone()
            if rel is None:
                raise FailedPrecondition(f"dataset '{self.att.dataset}': table {self.att.qualified} "
                                         "not found in the database")
            if rel[2] not in ("r", "p", "m"):
                return (rel[0], os.urandom(8).hex())
            count, newest = conn.execute(sql.SQL("SELECT count(*), max(xmin::text::bigint) FROM {}.{}").format(
                sql.Identifier(self.att.schema), sql.Identifier(self.att.table))).fetchone()
            return (int(rel[0]), int(rel[1]), int(count), int(newest or 0))
        return self._run(go)
