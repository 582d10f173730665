"""Everything one running node holds: store, keys, policy, governance, audit, and its
client connection to the coordinator. The gRPC servicer and the protocol steps use it.
"""
from __future__ import annotations

import hashlib
import logging
import pathlib
import threading
import time

from cryptography import x509

from pc_common import gm, jobspec, tls
from pc_common.audit import AuditLog
from pc_common.config import NodeConfig
from pc_common.errors import PermissionDenied
from pc_common.identity import identity_of, node_keys_of, NodeKeys
from pc_node.keystore import FieldCipher, generate_data_key, load_master_key, unwrap_data_key, wrap_data_key
from pc_common.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc, node_pb2
from pc_node.compute import Compute
from pc_node.governance import Governance
from pc_node.policy import Policy
from pc_node.sessions import Sessions
from pc_node.store import NodeStore

log = logging.getLogger("pc.node")
VERSION = "0.1.0"


class NodeCipher:
    """Bytes in, bytes out, over the keystore's field cipher."""

    def __init__(self, field: FieldCipher):
        self._field = field

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        return self._field.encrypt_field(bytes(data), aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        out = self._field.decrypt_field(bytes(blob), aad)
        return out.encode() if isinstance(out, str) else out

    def decrypt_many(self, blobs: list[bytes], aads: list[bytes]) -> list[bytes]:
        return [o.encode() if isinstance(o, str) else o
                for o in self._field.decrypt_fields([bytes(b) for b in blobs], aads)]

    def blind_index(self, key: str) -> bytes:
        return self._field.blind_index(key)

    def blind_index_rows(self, identifiers):
        """Blind indexes of the rows of an (n, L) uint8 array, in bulk (see FieldCipher)."""
        return self._field.blind_index_rows(identifiers)


def open_cipher(data_dir: pathlib.Path, master_key_file: pathlib.Path | None) -> NodeCipher:
    """The node's data key, created on first use and kept wrapped by the master key."""
    master = load_master_key(master_key_file or (data_dir / "master.key"))
    wrapped_file = data_dir / "data_key.wrapped"
    if wrapped_file.exists():
        data_key = unwrap_data_key(master, wrapped_file.read_bytes(), b"pc-node")
    else:
        data_key = generate_data_key()
        tmp = wrapped_file.with_suffix(".tmp")
        tmp.write_bytes(wrap_data_key(master, data_key, b"pc-node"))
        tmp.replace(wrapped_file)
    return NodeCipher(FieldCipher(data_key))


def open_store(config: NodeConfig) -> NodeStore:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return NodeStore(config.data_dir / "node.db", open_cipher(config.data_dir, config.master_key_file))


class NodeRuntime:
    def __init__(self, config: NodeConfig):
        self.config = config
        # Where heavy batches run and which secrets may go there (pc_node.compute; checked first,
        # so a bad address or secrets setting stops the node before it opens anything).
        self.compute = Compute.from_config(config)
        #: The time job specs and sessions are checked against (tests move it instead of sleeping).
        self.clock = time.time
        self.node_id = config.node_id
        self.store = open_store(config)
        self.policy = Policy(config.policy)
        self.governance = Governance(config.data_dir / "governance.db", config.approval_ttl_hours)
        self.sm2 = gm.Sm2PrivateKey.from_hex(config.sm2_key.read_text().strip())
        self.x25519_private = bytes.fromhex(config.x25519_key.read_text().strip())
        self.audit = AuditLog(config.data_dir / "audit.db", f"node:{self.node_id}", self.sm2)
        self.ca_pem = config.tls.ca.read_bytes()
        self._ca = x509.load_pem_x509_certificate(self.ca_pem)
        self._coordinator = None
        self._cert_cache: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.address = ""
        # In memory only: per-job PSI sessions and lookup queries (EC keys, identifiers), by job
        # id; job.cleanup drops them, and they are wiped when their job's lifetime ends.
        self.sessions = Sessions(self.governance.spec_lifetime, lambda: self.clock(), self._sessions_wiped)
        self.sessions_lock = threading.RLock()
        # Lookup filters by (dataset, label columns, masked), see pc_node.steps.lookup.provider_for.
        self.lookup_providers: dict[tuple, dict] = {}
        self.lookup_lock = threading.Lock()
        # When lookup key epochs start and end (pc_node.steps.lookup_epochs); tests replace it.
        self.lookup_clock = time.time

    def close(self) -> None:
        self.store.close()
        self.governance.close()
        self.compute.close()

    # ----- coordinator --------------------------------------------------------------
    @property
    def coordinator(self) -> coordinator_pb2_grpc.CoordinatorStub:
        with self._lock:
            if self._coordinator is None:
                channel = tls.secure_channel(self.config.coordinator, self.config.tls, "coordinator")
                self._coordinator = coordinator_pb2_grpc.CoordinatorStub(channel)
            return self._coordinator

    def peer_certificate(self, node_id: str) -> bytes:
        """A peer node's certificate, fetched through the coordinator and checked against our CA."""
        with self._lock:
            pem = self._cert_cache.get(node_id)
        if pem is None:
            pem = self.coordinator.GetNodeCertificate(coordinator_pb2.NodeRef(node_id=node_id),
                                                      timeout=10).certificate_pem
            cert = x509.load_pem_x509_certificate(pem)
            try:
                cert.verify_directly_issued_by(self._ca)
            except Exception:  # noqa: BLE001
                raise PermissionDenied(f"certificate of node '{node_id}' is not issued by the federation CA") from None
            ident = identity_of(cert)
            if ident.role != "node" or ident.agency != node_id:
                raise PermissionDenied(f"certificate returned for node '{node_id}' belongs to someone else")
            with self._lock:
                self._cert_cache[node_id] = pem
        return pem

    def peer_keys(self, node_id: str) -> NodeKeys:
        return node_keys_of(x509.load_pem_x509_certificate(self.peer_certificate(node_id)))

    def verify_spec(self, signed: node_pb2.SignedJobSpec) -> dict:
        """A step's signed spec, checked: the transport expiry at first sight, the job's lifetime
        on every later admission poll and step (an approval may come days after submission)."""
        doc = jobspec.parse(signed.spec)
        digest = hashlib.sha256(signed.spec).digest()
        now = self.clock()
        doc = jobspec.verify(signed.spec, signed.signature, self.peer_certificate(doc["requester"]), self.ca_pem,
                             now=now, first_seen=self.governance.first_seen(doc["job_id"], digest))
        self.governance.remember_spec(doc["job_id"], digest, jobspec.lifetime_end(doc), seen_at=now)
        return doc

    def remember_own_spec(self, spec: bytes) -> None:
        """The requester node sees its own spec first when it signs it."""
        doc = jobspec.parse(spec)
        self.governance.remember_spec(doc["job_id"], hashlib.sha256(spec).digest(), jobspec.lifetime_end(doc),
                                      seen_at=self.clock())

    # ----- retention ------------------------------------------------------------------
    def _sessions_wiped(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self.audit.append("retention.wipe", job=job_id, counts={"items": 1}, detail="session expired")

    def expire(self) -> None:
        """Wipe what has outlived its time: job sessions past their job's lifetime, expired blobs."""
        self.sessions.expire()
        for kind, name in self.store.expire_blobs():
            self.audit.append("retention.expire", job=name if kind == "results" else None, detail=kind)

    # ----- catalog --------------------------------------------------------------------
    def catalog(self) -> common_pb2.Catalog:
        out = common_pb2.Catalog()
        for meta in self.store.datasets():
            ds = out.datasets.add(agency=self.node_id, name=meta.name, key_column=meta.key_column,
                                  rows=meta.rows, description=meta.description, updated_at=meta.updated_at)
            for c in meta.all_columns():
                ds.columns.add(name=c.name, type=c.type, description=c.description, sharing=c.sharing,
                               sensitivity=c.sensitivity, unit=c.unit, categories=list(c.categories))
            for g in self.policy.grants_for(meta.name):   # disclosure demands too: clients refuse early
                pg = ds.grants.add(requester=g.requester, purposes=list(g.purposes), column_uses=g.columns,
                                   approval=g.approval, reveal=g.reveal, min_group_size=int(g.min_group_size))
                if g.epsilon is not None:
                    pg.epsilon = float(g.epsilon)
                if g.epsilon_budget is not None:
                    pg.epsilon_budget = float(g.epsilon_budget)
        return out
