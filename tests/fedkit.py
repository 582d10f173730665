"""Test kit: a real federation in-process — coordinator and nodes on loopback port 0 with
mutual TLS — driven through the client SDK exactly as a user would."""
from __future__ import annotations

import pathlib
import shutil
import time

from pc_client.sdk import Federation
from pc_common import certs
from pc_common.config import CoordinatorConfig, NodeConfig
from pc_coordinator import server as coordinator_server
from pc_node import server as node_server
from pc_node.importer import import_file


class LocalFederation:
    def __init__(self, root: pathlib.Path, agencies: list[str], heartbeat: int = 1):
        self.root = pathlib.Path(root)
        self.agencies = list(agencies)
        self.certs = self.root / "certs"
        clients = ["operator:operator"] + [c for a in agencies for c in (f"analyst@{a}", f"officer:officer@{a}")]
        certs.init(self.certs, agencies, clients)
        cdir = self.root / "coordinator"
        self.coordinator_config = CoordinatorConfig(listen="127.0.0.1:0", data_dir=cdir,
                                                     tls=certs.coordinator_files(self.certs),
                                                     heartbeat_seconds=heartbeat, offline_after_seconds=30)
        self.coordinator = None
        self.coordinator_port = 0
        self.nodes: dict[str, tuple] = {}
        self.presence: dict[str, node_server.Presence] = {}

    # ----- lifecycle -------------------------------------------------------------------------
    def start_coordinator(self):
        server, port, service = coordinator_server.create_server(self.coordinator_config)
        self.coordinator = (server, service)
        self.coordinator_port = port
        return self

    def node_config(self, agency: str) -> NodeConfig:
        d = self.root / agency
        nd = self.certs / "nodes" / agency
        return NodeConfig(node_id=agency, listen="127.0.0.1:0", coordinator=f"127.0.0.1:{self.coordinator_port}",
                          data_dir=d, tls=certs.node_files(self.certs, agency), sm2_key=nd / "sm2.key",
                          x25519_key=nd / "x25519.key", policy=d / "policy.toml", master_key_file=d / "master.key")

    def start_node(self, agency: str):
        cfg = self.node_config(agency)
        server, port, runtime = node_server.create_server(cfg)
        presence = node_server.Presence(runtime)
        presence.sync()
        presence.start()
        self.nodes[agency] = (server, runtime, port)
        self.presence[agency] = presence
        return runtime

    def start(self):
        self.start_coordinator()
        for a in self.agencies:
            self.start_node(a)
        return self

    def stop_node(self, agency: str):
        server, runtime, _ = self.nodes.pop(agency)
        self.presence.pop(agency).stop.set()
        server.stop(grace=0).wait()
        runtime.close()

    def stop_coordinator(self):
        server, service = self.coordinator
        server.stop(grace=0).wait()
        service.close()
        self.coordinator = None

    def stop(self):
        for a in list(self.nodes):
            self.stop_node(a)
        if self.coordinator:
            self.stop_coordinator()

    # ----- data --------------------------------------------------------------------------------
    def runtime(self, agency: str):
        return self.nodes[agency][1]

    def import_csv(self, agency: str, path: pathlib.Path, **kw):
        rep = import_file(self.runtime(agency).store, path, **kw)
        self.publish(agency)
        return rep

    def publish(self, agency: str):
        self.presence[agency].sync()

    def write_policy(self, agency: str, text: str):
        p = self.root / agency / "policy.toml"
        p.write_text(text)
        # mtime granularity: make sure the node sees a change
        t = time.time() + 1
        import os
        os.utime(p, (t, t))
        self.publish(agency)

    def client(self, user: str = "operator") -> Federation:
        if user == "operator":
            files = certs.client_files(self.certs, "platform", "operator")
            return Federation(f"127.0.0.1:{self.coordinator_port}", files)
        name, agency = user.split("@")
        node = self.nodes.get(agency)
        return Federation(f"127.0.0.1:{self.coordinator_port}", certs.client_files(self.certs, agency, name),
                          node=f"127.0.0.1:{node[2]}" if node else None)

    def copy_city(self, city: pathlib.Path):
        """Import every CSV of a city folder into the matching node."""
        for a in self.agencies:
            for csv_path in sorted((city / a).glob("*.csv")):
                import_file(self.runtime(a).store, csv_path, replace=True)
            self.publish(a)


def sandbox_policy_for_rules(city: pathlib.Path, fed: LocalFederation) -> None:
    """Reuse the sandbox's policy writer so tests grant exactly what rules need."""
    from pc_client.sandbox import Sandbox
    from pc_rules.rules import load_rule
    sb = Sandbox(city)
    rules = [load_rule(p) for p in sorted((city / "rules").glob("*.toml"))]
    sb.root = fed.root / "_policies"
    for a in fed.agencies:
        (sb.root / a).mkdir(parents=True, exist_ok=True)
        sb.write_policy(a, fed.agencies, rules)
        shutil.copy(sb.root / a / "policy.toml", fed.root / a / "policy.toml")
        fed.publish(a)
