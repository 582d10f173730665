"""A throw-away PostgreSQL cluster for the tests: ``initdb`` into a temporary directory and
``pg_ctl start`` listening only on a Unix socket in that directory (``listen_addresses=''``:
no TCP). initdb refuses to run as root, so as root the cluster belongs to the ``postgres``
user (Debian's package creates it) or ``nobody``, through ``runuser``.
"""
from __future__ import annotations

import csv
import glob
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile

from pc_node.importer import infer_type

PG_TYPES = {"integer": "bigint", "decimal": "numeric", "date": "date", "text": "text"}


def find(tool: str) -> str | None:
    """``tool`` on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which(tool)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, tool), os.X_OK):
            return os.path.join(d, tool)
    return None


class PgCluster:
    def __init__(self):
        self.pg_ctl = find("pg_ctl")
        self.initdb = find("initdb")
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pc-pg-"))
        self.data = self.dir / "data"
        self.user = None
        if os.geteuid() == 0:
            self.user = next(u for u in ("postgres", "nobody") if _has_user(u))
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.dsn = f"host={self.dir} dbname=postgres user=postgres"

    def _run(self, *cmd: str) -> None:
        if self.user:
            cmd = ("runuser", "-u", self.user, "--", *cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> "PgCluster":
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", f"-k {self.dir} -c listen_addresses='' -F", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, dbname: str = "postgres"):
        import psycopg
        return psycopg.connect(f"host={self.dir} dbname={dbname} user=postgres", autocommit=True)

    def load_csv(self, table: str, path: pathlib.Path, key: str = "id_number", index: bool = True) -> list[str]:
        """Create ``table`` (SCHEMA.TABLE) from a CSV with types inferred as the importer would;
        empty cells become NULL. Returns the column names."""
        from psycopg import sql
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        types = [("text" if h == key else infer_type([r[i].strip() for r in body])) for i, h in enumerate(header)]
        schema, name = table.split(".")
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE TABLE {}.{} ({})").format(
                sql.Identifier(schema), sql.Identifier(name),
                sql.SQL(", ").join(sql.SQL("{} " + PG_TYPES[t]).format(sql.Identifier(h))
                                   for h, t in zip(header, types))))
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL("INSERT INTO {}.{} VALUES ({})").format(
                        sql.Identifier(schema), sql.Identifier(name),
                        sql.SQL(", ").join(sql.Placeholder() * len(header))),
                    [[(None if (v.strip() == "" and t != "text") else (v if t == "text" else v.strip()))
                      for v, t in zip(r, types)] for r in body])
            if index:
                conn.execute(sql.SQL("CREATE INDEX ON {}.{} ({})").format(
                    sql.Identifier(schema), sql.Identifier(name), sql.Identifier(key)))
        return header


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
