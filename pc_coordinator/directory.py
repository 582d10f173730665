"""The coordinator's node directory and aggregated catalog (persistent)."""
from __future__ import annotations

import sqlite3
import threading
import time

from pc_common.errors import NotFound
from pc_common.pb import common_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    certificate_pem BLOB NOT NULL,
    version TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    catalog BLOB,
    catalog_digest TEXT
);
"""


from pc_common.catalog import catalog_digest  # noqa: E402  (shared with nodes)


class Directory:
    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, offline_after: float):
        self._db, self._lock, self.offline_after = db, lock, offline_after
        with self._lock:
            self._db.executescript(SCHEMA)

    def register(self, node_id: str, address: str, cert_pem: bytes, version: str) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO nodes (node_id, address, certificate_pem, version, registered_at, last_seen)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET address=excluded.address,"
                " certificate_pem=excluded.certificate_pem, version=excluded.version, last_seen=excluded.last_seen",
                (node_id, address, cert_pem, version, now, now))

    def heartbeat(self, node_id: str, digest: str) -> bool:
        """Record liveness; True when the node should re-send its catalog."""
        with self._lock:
            r = self._db.execute("SELECT catalog_digest FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if r is None:
                raise NotFound("node is not registered; call Register first")
            self._db.execute("UPDATE nodes SET last_seen = ? WHERE node_id = ?", (time.time(), node_id))
            return r[0] != digest

    def publish_catalog(self, node_id: str, catalog: common_pb2.Catalog) -> None:
        with self._lock:
            cur = self._db.execute("UPDATE nodes SET catalog = ?, catalog_digest = ?, last_seen = ? WHERE node_id = ?",
                                   (catalog.SerializeToString(deterministic=True), catalog_digest(catalog),
                                    time.time(), node_id))
            if cur.rowcount == 0:
                raise NotFound("node is not registered; call Register first")

    def nodes(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT node_id, address, last_seen, catalog FROM nodes ORDER BY node_id").fetchall()
        now = time.time()
        out = []
        for node_id, address, last_seen, cat in rows:
            n = len(common_pb2.Catalog.FromString(cat).datasets) if cat else 0
            out.append({"node_id": node_id, "address": address, "last_seen": last_seen,
                        "online": now - last_seen <= self.offline_after, "datasets": n})
        return out

    def node(self, node_id: str) -> dict:
        for n in self.nodes():
            if n["node_id"] == node_id:
                return n
        raise NotFound(f"no node '{node_id}' in the directory")

    def certificate(self, node_id: str) -> bytes:
        with self._lock:
            r = self._db.execute("SELECT certificate_pem FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        if r is None:
            raise NotFound(f"no node '{node_id}' in the directory")
        return bytes(r[0])

    def catalog(self) -> common_pb2.Catalog:
        out = common_pb2.Catalog()
        with self._lock:
            rows = self._db.execute("SELECT catalog FROM nodes WHERE catalog IS NOT NULL ORDER BY node_id").fetchall()
        for (cat,) in rows:
            out.datasets.extend(common_pb2.Catalog.FromString(cat).datasets)
        return out

    def dataset(self, agency: str, name: str) -> common_pb2.Dataset:
        for d in self.catalog().datasets:
            if d.agency == agency and d.name == name:
                return d
        raise NotFound(f"the catalog has no dataset '{agency}.{name}'")
