"""A local federation for trying things out: ``pc sandbox up DIR`` / ``pc sandbox down DIR``.

DIR holds one folder per agency with ``<dataset>.csv`` files (and optional
``<dataset>.toml`` column metadata) and optionally ``rules/*.toml``. ``up`` creates under
DIR/.sandbox a CA and certificates, configs, data directories and logs, imports every CSV,
grants each rule's requester what its rules need, and starts a coordinator and one node
per agency in the background on loopback ports chosen by the system. Imports and grants go
through the node's operator API (``pc_node.admin``), as an agency operator's would.

    with connect("city", "analyst@civil_affairs") as fed:    # a pc_client.sdk.Federation
        fed.verify("city/rules/dibao.toml", "city/civil_affairs/applicants.csv", out="verdicts.csv")
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent import futures
import pathlib
import signal
import subprocess
import sys
import time

from pc_common import certs
from pc_common.config import NodeConfig
from pc_common.errors import FailedPrecondition, InvalidInput, PcError
from pc_common.identity import NAME_RE
from pc_client.sdk import Federation


def _admin():
    """The node's admin module, imported when a sandbox is brought up or granted (not for a
    client of a running sandbox: it pulls the import machinery, pyarrow among it; the rule
    machinery is imported where it is used for the same reason)."""
    from pc_node import admin
    return admin

STATE = "sandbox.json"
SANDBOX_PURPOSE_PSI = "data_matching"
# A sandbox is for trying rules out again and again on the same applicants: a provider there
# evaluates one subject up to this many times a day (a production grant's default is 3).
SANDBOX_EVALUATIONS_PER_DAY = 100


def agencies_of(directory: pathlib.Path) -> list[str]:
    out = []
    for p in sorted(directory.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name != "rules" and (
                any(p.glob("*.csv")) or any(p.glob("*" + _admin().POSTGRES_SUFFIX))):
            if not NAME_RE.match(p.name):
                raise InvalidInput(f"agency folder '{p.name}' must be named [a-z][a-z0-9_]*")
            out.append(p.name)
    if not out:
        raise InvalidInput(f"{directory}: no agency folders with CSV files")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


class Sandbox:
    def __init__(self, directory):
        self.dir = pathlib.Path(directory).resolve()
        self.root = self.dir / ".sandbox"
        self.certs = self.root / "certs"

    # ----- state ------------------------------------------------------------------------------
    def state(self) -> dict:
        try:
            return json.loads((self.root / STATE).read_text())
        except FileNotFoundError:
            raise FailedPrecondition(f"no sandbox is up in {self.dir}; run 'pc sandbox up {self.dir}'") from None

    def running(self) -> bool:
        try:
            st = self.state()
        except FailedPrecondition:
            return False
        return any(_alive(p) for p in st.get("pids", {}).values())

    def federation(self, user: str | None = None) -> Federation:
        """A client of the running sandbox: the platform operator by default, or ``USER@AGENCY``."""
        st = self.state()
        if user is None or user == "operator":
            files = certs.client_files(self.certs, "platform", "operator")
            return Federation(st["coordinator"], files)
        if ":" in user:
            _, user = user.split(":", 1)
        if "@" not in user:
            raise InvalidInput("--as must be USER@AGENCY (e.g. analyst@civil_affairs)")
        name, agency = user.split("@", 1)
        files = certs.client_files(self.certs, agency, name)
        if not files.cert.exists():
            raise InvalidInput(f"the sandbox has no client '{user}'")
        return Federation(st["coordinator"], files, node=st["nodes"].get(agency))

    # ----- up ---------------------------------------------------------------------------------
    def up(self, log=print, timeout: float = 60, console: bool = False) -> dict:
        if not self.dir.is_dir():
            raise InvalidInput(f"no such folder: {self.dir}")
        if self.running():
            raise FailedPrecondition(f"a sandbox is already up in {self.dir}; run 'pc sandbox down' first")
        from pc_rules.rules import load_rule
        agencies = agencies_of(self.dir)
        rules = [load_rule(p) for p in sorted((self.dir / "rules").glob("*.toml"))] \
            if (self.dir / "rules").is_dir() else []
        self.root.mkdir(exist_ok=True)
        if not (self.certs / "ca.pem").exists() or any(not certs.node_files(self.certs, a).cert.exists()
                                                       for a in agencies):
            if self.certs.exists():
                import shutil
                shutil.rmtree(self.certs)
            clients = ["operator:operator"] + [c for a in agencies for c in (f"analyst@{a}", f"officer:officer@{a}")]
            certs.init(self.certs, agencies, clients)
        self._write_coordinator_config()
        keys: dict[str, dict[str, str]] = {}
        for a in agencies:
            self._write_node_config(a)
        # One process per agency (each node has its own store): imports use every core.
        with futures.ProcessPoolExecutor(max_workers=min(len(agencies), os.cpu_count() or 1),
                                         mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = {a: pool.submit(_import_agency, str(self.dir), str(self.root), a) for a in agencies}
            for a, job in jobs.items():
                keys[a], warnings = job.result()
                for w in warnings:
                    log(w)
                log(f"imported {len(keys[a])} dataset(s) for {a}")
        for a in agencies:
            self.write_policy(a, agencies, rules, keys)
        pids = {}
        coordinator_dir = self.root / "coordinator"
        (coordinator_dir / "address").unlink(missing_ok=True)
        pids["coordinator"] = self._spawn(["coordinator", "serve", "--config", str(coordinator_dir / "coordinator.toml")],
                                          coordinator_dir / "coordinator.log")
        state = {"dir": str(self.dir), "pids": pids, "nodes": {}, "coordinator": ""}
        self._save(state)
        state["coordinator"] = self._wait_address(coordinator_dir, pids["coordinator"], timeout)
        self._save(state)
        for a in agencies:
            self._write_node_config(a, state["coordinator"])
            (self.root / a / "address").unlink(missing_ok=True)
            pids[a] = self._spawn(["node", "serve", "--config", str(self.root / a / "node.toml")],
                                  self.root / a / "node.log")
            self._save(state)
        for a in agencies:
            state["nodes"][a] = self._wait_address(self.root / a, pids[a], timeout)
        self._save(state)
        self._wait_registered(agencies, timeout)
        if console:
            self._start_consoles(state, timeout)
        return state

    def _start_consoles(self, state: dict, timeout: float) -> None:
        """The web consoles (``pc_console.provision``): one per agency and one for the platform,
        their HTTPS addresses under ``consoles``, their users in .sandbox/console-users.json (0600)."""
        from pc_console.provision import provision, write_users
        rules = self.dir / "rules"
        configs, users = provision(self.root, self.certs, state["coordinator"], state["nodes"],
                                   rules if rules.is_dir() else None)
        write_users(self.root, users)
        state["consoles"] = {}
        for party, config in configs.items():
            (config.parent / "address").unlink(missing_ok=True)
            state["pids"][f"console:{party}"] = self._spawn(["console", "serve", "--config", str(config)],
                                                            config.parent / "console.log")
            self._save(state)
        for party, config in configs.items():
            state["consoles"][party] = self._wait_address(config.parent, state["pids"][f"console:{party}"], timeout)
        self._save(state)

    def _save(self, state: dict) -> None:
        tmp = self.root / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.root / STATE)

    def _spawn(self, args: list[str], log_file: pathlib.Path) -> int:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pc_client.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        return proc.pid

    def _wait_address(self, data_dir: pathlib.Path, pid: int, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            addr = data_dir / "address"
            if addr.exists():
                return addr.read_text().strip()
            if not _alive(pid):
                log_tail = ""
                for name in ("node.log", "coordinator.log", "console.log"):
                    if (data_dir / name).exists():
                        log_tail = (data_dir / name).read_text(errors="replace").strip().splitlines()[-1:]
                        log_tail = log_tail[0] if log_tail else ""
                self.down(quiet=True)
                raise FailedPrecondition(f"server in {data_dir.name} exited during start: {log_tail}")
            time.sleep(0.05)
        self.down(quiet=True)
        raise FailedPrecondition(f"server in {data_dir.name} did not start within {timeout:.0f} s")

    def _wait_registered(self, agencies: list[str], timeout: float) -> None:
        deadline = time.time() + timeout
        expected = {a: len(list((self.dir / a).glob("*.csv"))) + len(list((self.dir / a).glob("*" + _admin().POSTGRES_SUFFIX)))
                    for a in agencies}
        with self.federation() as fed:
            while time.time() < deadline:
                try:
                    seen: dict[str, int] = {}
                    for d in fed.catalog().datasets:
                        seen[d.agency] = seen.get(d.agency, 0) + 1
                    online = {n.node_id for n in fed.nodes() if n.online}
                    if all(seen.get(a, 0) >= n and a in online for a, n in expected.items()):
                        return
                except Exception:  # noqa: BLE001 - still starting
                    pass
                time.sleep(0.1)
        self.down(quiet=True)
        raise FailedPrecondition("nodes did not register with the coordinator in time (see the logs under .sandbox)")

    def _write_coordinator_config(self) -> None:
        d = self.root / "coordinator"
        d.mkdir(parents=True, exist_ok=True)
        (d / "coordinator.toml").write_text(
            'listen = "127.0.0.1:0"\n'
            f'data_dir = {_toml_str(str(d))}\n'
            'heartbeat_seconds = 2\noffline_after_seconds = 10\n\n[tls]\n'
            f'cert = {_toml_str(str(self.certs / "coordinator" / "cert.pem"))}\n'
            f'key = {_toml_str(str(self.certs / "coordinator" / "key.pem"))}\n'
            f'ca = {_toml_str(str(self.certs / "ca.pem"))}\n')

    def _write_node_config(self, agency: str, coordinator: str = "127.0.0.1:1") -> pathlib.Path:
        d = self.root / agency
        d.mkdir(parents=True, exist_ok=True)
        nd = self.certs / "nodes" / agency
        path = d / "node.toml"
        path.write_text(
            f'node_id = "{agency}"\nlisten = "127.0.0.1:0"\ncoordinator = {_toml_str(coordinator)}\n'
            f'data_dir = {_toml_str(str(d))}\npolicy = {_toml_str(str(d / "policy.toml"))}\n'
            f'master_key_file = {_toml_str(str(d / "master.key"))}\n\n[tls]\n'
            f'cert = {_toml_str(str(nd / "cert.pem"))}\nkey = {_toml_str(str(nd / "key.pem"))}\n'
            f'ca = {_toml_str(str(self.certs / "ca.pem"))}\n'
            f'sm2_key = {_toml_str(str(nd / "sm2.key"))}\nx25519_key = {_toml_str(str(nd / "x25519.key"))}\n')
        return path

    def grants(self, agency: str, agencies: list[str], rules, keys: dict | None = None) -> list:
        """Sandbox grants: PSI on every dataset between sandbox agencies, and what each rule needs,
        pinned to that rule (its id and the digest of its criteria touching ``agency``): edit a
        rule's thresholds and ``pc sandbox up`` again to serve the edited rule."""
        admin = _admin()
        datasets = sorted([p.stem for p in (self.dir / agency).glob("*.csv")]
                          + [p.name.removesuffix(admin.POSTGRES_SUFFIX)
                             for p in (self.dir / agency).glob("*" + admin.POSTGRES_SUFFIX)])
        key_of = {ds: (keys or {}).get(agency, {}).get(ds) or admin.key_column_of(self.dir / agency / f"{ds}.csv")
                  for ds in datasets}
        out = [admin.Grant(ds, other, (SANDBOX_PURPOSE_PSI,), {key_of[ds]: "join_key"}, approval="auto")
               for ds in datasets for other in agencies if other != agency]
        from pc_rules.rules import column_uses
        for rule in rules:
            for ds, cols in sorted(column_uses(rule, agency).items()):
                columns = {key_of.get(ds, admin.DEFAULT_KEY_COLUMN): "join_key", **dict(sorted(cols.items()))}
                out.append(admin.Grant(ds, rule.requester, (rule.purpose,), columns, approval="auto",
                                       reveal=rule.reveal, rules=((rule.id, rule.criteria_digest(agency)),),
                                       max_evaluations_per_subject=SANDBOX_EVALUATIONS_PER_DAY))
        out += query_grants(agency, [p.read_text(encoding="utf-8") for p in sorted((self.dir / "queries").glob("*.sql"))]
                            if (self.dir / "queries").is_dir() else [], key_of)
        return out

    def write_policy(self, agency: str, agencies: list[str], rules, keys: dict | None = None) -> pathlib.Path:
        """Write ``grants(...)`` as the agency node's policy file under this sandbox's root."""
        return _admin().write_grants(self.root / agency / "policy.toml", self.grants(agency, agencies, rules, keys),
                                  comment="Written by 'pc sandbox up': grants for trying the sandbox out.")


    # ----- down -------------------------------------------------------------------------------
    def down(self, quiet: bool = False, timeout: float = 15) -> int:
        try:
            st = self.state()
        except FailedPrecondition:
            if quiet:
                return 0
            raise
        pids = st.get("pids", {})
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        for pid in pids.values():
            while _alive(pid) and time.time() < deadline:
                time.sleep(0.05)
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        (self.root / STATE).unlink(missing_ok=True)
        return len(pids)


def _import_agency(directory: str, root: str, agency: str) -> tuple[dict[str, str], list[str]]:
    """Import every CSV of the agency folder and attach every ``<dataset>.postgres.toml``;
    returns ({dataset: key column}, warnings).

    A sandbox is for trying things out, so it is lenient where a production import is
    strict: invalid rows are skipped (and written to .sandbox/AGENCY/DATASET.rejects.csv),
    and a CSV without metadata and without an ``id_number`` column uses the column that
    holds identity numbers. A CSV unchanged since the last ``up`` is not imported again.
    """
    admin = _admin()
    dir_, root_ = pathlib.Path(directory), pathlib.Path(root)
    keys, warnings = {}, []
    with admin.NodeAdmin(NodeConfig.load(root_ / agency / "node.toml")) as node:
        for csv_path in sorted((dir_ / agency).glob("*.csv")):
            if node.imported_unchanged(csv_path):
                keys[csv_path.stem] = node.dataset(csv_path.stem).key_column
                continue
            rejects = root_ / agency / f"{csv_path.stem}.rejects.csv"
            rejects.unlink(missing_ok=True)
            try:
                # Row numbers and reasons only: no identifier lands in a node's folder.
                rep = node.import_dataset(csv_path, replace=True, skip_invalid=True, rejects=rejects,
                                          key_column=admin.key_column_of(csv_path, detect=True),
                                          rejects_with_values=False)
            except PcError as exc:
                raise type(exc)(f"{agency}/{csv_path.name}: {exc}") from None
            if rep.rejected:
                warnings.append(f"warning: {agency}/{csv_path.name}: {rep.rejected} invalid row(s) skipped,"
                                f" see {rejects}")
            keys[rep.dataset] = node.dataset(rep.dataset).key_column
        for spec in sorted((dir_ / agency).glob("*" + admin.POSTGRES_SUFFIX)):   # attached, not imported
            try:
                att = node.attach_from_file(spec, replace=True)
            except PcError as exc:
                raise type(exc)(f"{agency}/{spec.name}: {exc}") from None
            warnings += [f"warning: {agency}/{spec.name}: {w}" for w in att.warnings
                         if "can write" not in w]          # a sandbox's database role usually can
            if att.skipped:
                warnings.append(f"warning: {agency}/{spec.name}: {att.skipped} row(s) with an invalid identifier skipped")
            keys[att.dataset] = node.dataset(att.dataset).key_column
    return keys, warnings


def connect(directory, user: str | None = None) -> Federation:
    """A client (``pc_client.sdk.Federation``) of the sandbox running in ``directory``: the
    platform operator by default, or ``USER@AGENCY`` (e.g. ``analyst@civil_affairs``)."""
    return Sandbox(directory).federation(user)


def query_grants(agency: str, queries: list[str], key_of: dict[str, str]) -> list:
    """Grants of ``agency`` for each query (SQL text; ``DIR/queries/*.sql`` in a sandbox): what the
    query needs, to the agency of its FROM dataset, with the minimum group size 5 and, for a query
    over several provider agencies, ``query_with`` naming the others (docs/query.md);
    a first line ``-- epsilon: E`` makes the grant demand DP: ε E per query, 10·E per day."""
    admin = _admin()
    import re
    from pc_common.job_kinds import DEFAULT_PURPOSE
    from pc_rules.query import parse_query
    from pc_rules.query_catalog import query_column_uses
    out = []
    plans = [parse_query(sql) for sql in queries]
    # One set per requester: the policy picks the first grant whose column uses fit, so every
    # query grant to that requester names all agencies its queries combine with this one.
    others: dict[str, set[str]] = {}
    for plan in plans:
        if agency in plan.providers():
            others.setdefault(plan.requester, set()).update(a for a in plan.providers() if a != agency)
    for sql, plan in zip(queries, plans):
        first = re.match(r"\s*--\s*epsilon\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*(?:\n|$)", sql)
        dp = {"epsilon": float(first.group(1)), "epsilon_budget": 10 * float(first.group(1))} if first else {}
        for ds, cols in sorted(query_column_uses(plan, agency).items()):
            columns = {key_of.get(ds, admin.DEFAULT_KEY_COLUMN): "join_key", **dict(sorted(cols.items()))}
            out.append(admin.Grant(ds, plan.requester, (DEFAULT_PURPOSE,), columns, approval="auto",
                                   max_evaluations_per_subject=SANDBOX_EVALUATIONS_PER_DAY, min_group_size=5,
                                   query_with=tuple(sorted(others.get(plan.requester, ()))), **dp))
    return out
