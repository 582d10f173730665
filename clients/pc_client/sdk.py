"""Python client SDK: what the `pc` command line does, in a few calls.

    fed = Federation("127.0.0.1:7000", certs.client_files("certs", "civil_affairs", "analyst"),
                     node="127.0.0.1:7001")        # a local sandbox: pc_client.sandbox.connect(dir, user)
    print(fed.catalog())
    result = fed.verify("rules/dibao.toml", "city/civil_affairs/applicants.csv", out="verdicts.csv")
    print(result.summary, result.leakage)

The client talks to the coordinator for the directory, catalog and jobs, and to its own
agency's node for subjects and results — subjects and results never pass the coordinator.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time
from typing import Callable, Iterator

import grpc
from cryptography import x509

from pc_common import tls
from pc_common.certs import PartyFiles
from pc_common.errors import FailedPrecondition, InvalidInput, PcError
from pc_common.identity import Identity, identity_of
from pc_common.pb import common_pb2, coordinator_pb2_grpc, node_pb2, node_pb2_grpc

TERMINAL = ("succeeded", "failed", "cancelled")
ProgressFn = Callable[[object], None]


# The SQL parser (sqlglot, ≈ 0.15 s to import) loads only in the commands that parse SQL: a
# `pc psi` or `pc verify` process does not pay it.
def parse_query(sql: str):
    from pc_rules.query import parse_query as parse
    return parse(sql)


def validate_query(plan, catalog, requester: str | None = None):
    from pc_rules.query_catalog import validate_query as validate
    return validate(plan, catalog, requester)


class JobFailed(PcError):
    """A job ended in failed or cancelled state."""


@dataclasses.dataclass
class JobResult:
    job_id: str
    state: str
    summary: dict
    leakage: dict
    out: str | None = None
    rows: int = 0
    records: list | None = None             # queries: the results file's rows as dicts


class Federation:
    def __init__(self, coordinator: str, tls_files: PartyFiles, node: str | None = None, timeout: float = 30):
        self.tls_files = tls_files
        self.identity: Identity = identity_of(x509.load_pem_x509_certificate(tls_files.read()[0]))
        self.timeout = timeout
        self._coordinator_channel = tls.secure_channel(coordinator, tls_files, "coordinator")
        self.coordinator = coordinator_pb2_grpc.CoordinatorStub(self._coordinator_channel)
        self.node_address = node
        self._node = None

    def close(self) -> None:
        self._coordinator_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def node(self) -> node_pb2_grpc.NodeStub:
        if self._node is None:
            if not self.node_address:
                raise InvalidInput("this command needs your agency's node address (--node or --sandbox)")
            channel = tls.secure_channel(self.node_address, self.tls_files, self.identity.agency)
            self._node = node_pb2_grpc.NodeStub(channel)
        return self._node

    # ----- directory and catalog ---------------------------------------------------------
    def catalog(self) -> common_pb2.Catalog:
        return self.coordinator.GetCatalog(common_pb2.Empty(), timeout=self.timeout)

    def nodes(self):
        return list(self.coordinator.ListNodes(common_pb2.Empty(), timeout=self.timeout).nodes)

    # ----- jobs ------------------------------------------------------------------------------
    def jobs(self):
        return list(self.coordinator.ListJobs(common_pb2.Empty(), timeout=self.timeout).jobs)

    def job(self, job_id: str):
        return self.coordinator.GetJob(node_pb2.JobRef(job_id=job_id), timeout=self.timeout)

    def cancel(self, job_id: str):
        return self.coordinator.CancelJob(node_pb2.JobRef(job_id=job_id), timeout=self.timeout)

    def watch(self, job_id: str, on_update: ProgressFn | None = None, timeout: float = 3600):
        """Follow a job until it ends; returns the final job.

        The coordinator bounds open watch streams per client; when this client is at its bound
        (RESOURCE_EXHAUSTED) the job is polled with ``GetJob`` instead."""
        deadline = time.time() + timeout
        job = None
        last = None
        while time.time() < deadline:
            try:
                for job in self.coordinator.WatchJob(node_pb2.JobRef(job_id=job_id), timeout=deadline - time.time()):
                    if on_update:
                        on_update(job)
                    if job.state in TERMINAL:
                        return job
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    job = self.job(job_id)
                    if on_update and job.SerializeToString() != last:
                        last = job.SerializeToString()
                        on_update(job)
                    if job.state in TERMINAL:
                        return job
                    time.sleep(1.0)
                    continue
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,):
                    raise
                time.sleep(0.5)
        raise FailedPrecondition("timed out waiting for the job")

    def submit(self, kind: str, params: dict, subject_set: str = "") -> str:
        signed = self.node.PrepareJob(node_pb2.PrepareJobRequest(kind=kind, params=json.dumps(params).encode(),
                                                                 subject_set=subject_set), timeout=self.timeout)
        job = self.coordinator.SubmitJob(signed, timeout=self.timeout)
        return job.job_id

    def _finish(self, job, out: str | None, local_summary: bool = False) -> JobResult:
        if job.state != "succeeded":
            raise JobFailed(f"job {job.job_id} {job.state}: {job.reason}")
        result = JobResult(job.job_id, job.state, json.loads(job.summary_json or "{}"),
                           json.loads(job.leakage_json or "{}"))
        if out or local_summary:
            rows, summary = self.results(job.job_id, out)
            result.summary.update(summary)
            if out:
                result.rows, result.out = rows, str(out)
        return result

    def results(self, job_id: str, out=None) -> tuple[int, dict]:
        """Fetch a job's results (kept at your own node, never at the coordinator).

        Writes the results file to ``out`` when given (no partial file is left behind on
        failure); returns (data rows, the node's summary).
        """
        tmp = pathlib.Path(out).with_name(pathlib.Path(out).name + ".part") if out else None
        rows, summary = 0, {}
        try:
            fh = open(tmp, "wb") if tmp else None
            try:
                for chunk in self.node.FetchResults(node_pb2.JobRef(job_id=job_id), timeout=self.timeout * 10):
                    if fh:
                        fh.write(chunk.data)
                    rows += chunk.data.count(b"\n")
                    if chunk.summary_json:
                        summary = json.loads(chunk.summary_json)
            finally:
                if fh:
                    fh.close()
        except BaseException:
            if tmp:
                tmp.unlink(missing_ok=True)
            raise
        if tmp:
            tmp.replace(pathlib.Path(out))
        return max(rows - 1, 0), summary

    # ----- eligibility verification --------------------------------------------------------------
    def upload_subjects(self, subjects_csv, rule) -> node_pb2.SubjectsReceipt:
        path = pathlib.Path(subjects_csv)
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames or []
                for col in [rule.subject_column] + ([rule.group_column] if rule.group_column else []):
                    if col not in header:
                        raise InvalidInput(f"{path.name}: column '{col}' (named by the rule) is not in the header")
                rows = [(r[rule.subject_column] or "", (r[rule.group_column] or "") if rule.group_column else "")
                        for r in reader]
        except FileNotFoundError:
            raise InvalidInput(f"no such file: {path}") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InvalidInput(f"{path.name}: not a readable UTF-8 CSV ({exc})") from None
        if not rows:
            raise InvalidInput(f"{path.name}: no subjects")

        def chunks() -> Iterator[node_pb2.SubjectsChunk]:
            first = True
            for start in range(0, len(rows), 20000):
                part = [node_pb2.SubjectRow(subject=s, group=g) for s, g in rows[start:start + 20000]]
                if first:
                    yield node_pb2.SubjectsChunk(subject_column=rule.subject_column,
                                                 group_column=rule.group_column or "", rows=part)
                    first = False
                else:
                    yield node_pb2.SubjectsChunk(rows=part)
        return self.node.UploadSubjects(chunks(), timeout=self.timeout * 10)

    def verify(self, rule_path, subjects_csv, out=None, he: str = "bfv",
               on_update: ProgressFn | None = None) -> JobResult:
        from pc_common.catalog import catalog_view      # here, not at the top: a PSI command never loads
        from pc_rules.rules import load_rule, validate_against_catalog     # the rule machinery
        rule = load_rule(rule_path)
        if rule.requester != self.identity.agency:
            raise InvalidInput(f"{pathlib.Path(rule_path).name}: the rule's requester is '{rule.requester}' but"
                               f" you are a client of '{self.identity.agency}'")
        validate_against_catalog(rule, catalog_view(self.catalog()))
        receipt = self.upload_subjects(subjects_csv, rule)
        job_id = self.submit("verify", {"rule": rule.to_dict(), "he": he}, receipt.subject_set)
        return self._finish(self.watch(job_id, on_update), out)

    # ----- PSI and lookups -------------------------------------------------------------------------
    def psi(self, datasets: list[str], cardinality_only: bool = False, out=None, purpose: str = "data_matching",
            result_to_all: bool = False, on_update: ProgressFn | None = None, protocol: str = "",
            crypto: str = "") -> JobResult:
        """``protocol``: "kkrt" (OT extension, two-party), "ecdh", or "" for the planner's choice;
        ``crypto``: KKRT's primitives, "aes" (default: AES, BLAKE3) or "gm" (SM4, SM3)."""
        params = {"datasets": list(datasets), "cardinality_only": bool(cardinality_only), "purpose": purpose,
                  "result_to_all": bool(result_to_all)}
        if protocol:
            params["protocol"] = protocol
        if crypto:
            params["crypto"] = crypto
        job_id = self.submit("psi", params)
        return self._finish(self.watch(job_id, on_update), out, local_summary=True)

    def lookup(self, own_dataset: str, provider_dataset: str, out=None, purpose: str = "data_matching",
               labels: list[str] | None = None, masked: bool = False,
               on_update: ProgressFn | None = None) -> JobResult:
        """Query-private lookup (匿踪查询): which of your identifiers the provider holds.

        ``labels`` asks for provider columns of the matches (policy: ``plaintext``, or
        ``masked`` with ``masked=True``)."""
        job_id = self.submit("lookup", {"datasets": [own_dataset, provider_dataset], "purpose": purpose,
                                        "labels": list(labels or []), "masked": bool(masked)})
        return self._finish(self.watch(job_id, on_update), out, local_summary=True)

    # ----- federated queries -------------------------------------------------------------------------
    def query(self, sql: str, out=None, min_group_size: int = 5, purpose: str = "data_matching",
              on_update: ProgressFn | None = None, private: bool = False, epsilon: float | None = None) -> JobResult:
        """A federated query (docs/query.md): checked here against the catalog before anything runs;
        returns the released groups as ``records`` (and writes the results file to ``out``)."""
        from pc_common.catalog import catalog_view
        plan, view = parse_query(sql), catalog_view(self.catalog())
        validate_query(plan, view, self.identity.agency)
        if not private:   # the published k / ε demands, before preparing (private mode: at its provider)
            from pc_rules.query_catalog import check_disclosure
            check_disclosure(plan, view, self.identity.agency, purpose, int(min_group_size), epsilon)
        # private=True: the query-private mode (docs/query_private.md), a job kind of its own.
        params = {"sql": sql, "min_group_size": int(min_group_size), "purpose": purpose}
        if epsilon:      # differential privacy, signed into the spec (docs/query.md)
            params["epsilon"] = float(epsilon)
        job_id = self.submit("query_private" if private else "query", params)
        job = self.watch(job_id, on_update)
        if job.state != "succeeded":
            raise JobFailed(f"job {job.job_id} {job.state}: {job.reason}")
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            target = pathlib.Path(out) if out else pathlib.Path(tmp) / "results.csv"
            result = self._finish(job, str(target))
            with open(target, newline="", encoding="utf-8") as fh:
                result.records = list(csv.DictReader(fh))
        if not out:
            result.out = None
        return result

    # ----- approvals (data officers) ----------------------------------------------------------------
    def approvals(self):
        return list(self.node.ListApprovals(common_pb2.Empty(), timeout=self.timeout).approvals)

    def decide(self, job_id: str, approve: bool, reason: str = ""):
        return self.node.DecideApproval(node_pb2.ApprovalDecision(job_id=job_id, approve=approve, reason=reason),
                                        timeout=self.timeout)

    def quota_usage(self) -> node_pb2.QuotaReport:
        """The node's grants with their quota limits and current use (officers of its agency)."""
        return self.node.QuotaUsage(common_pb2.Empty(), timeout=self.timeout)
