#!/usr/bin/env python3
"""Scale-out engines for the node's heavy batches (issue 14 item 4): local vs Dask vs Ray.

Starts a real local cluster of each engine on loopback — Dask: ``dask scheduler`` and two
``dask worker`` processes (one thread each); Ray: ``ray start --head`` (no CPUs) and two
``ray start --address`` worker nodes (one CPU each) — and measures, on the same batches:

* start-up: launching the processes until a client sees both workers;
* per-task overhead: a round trip of one no-op task (serial), and of 200 no-op tasks mapped;
* PSI: scalar multiplication of ``--points`` points in batches of 8192 (the node's
  ``pc_node.compute.scalarmult_task``), throughput and identical results to local;
* BFV: encryption of a ``--slots``-slot vector, 2 ciphertext chunks per task
  (``pc_node.secure_agg.bfv.encrypt_parts``), decrypted and checked against the input.

``--psi N`` also runs a whole ECDH PSI of N × N identifiers (both sessions in this process)
through the node's cluster path (``Compute.connect`` + ``ClusterEcBackend``) against local.
Timings on a shared machine vary with its load: the load average is printed.

    python scripts/bench_compute.py --engines dask,ray --points 262144 --slots 131072 [--psi 1000000 --psi-repeat 2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = pathlib.Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PC_PSI_WORKERS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def noop(x=None):
    return x


# ----- clusters --------------------------------------------------------------------------------------
def start_dask(tmp: pathlib.Path, workers: int = 2):
    """Scheduler + ``workers`` worker processes on loopback port 0: (address, processes)."""
    sched_file = tmp / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    while not sched_file.exists():
        time.sleep(0.05)
    import json
    for _ in range(100):
        try:
            address = json.loads(sched_file.read_text())["address"]
            break
        except (ValueError, KeyError):
            time.sleep(0.05)
    for _ in range(workers):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--host", "127.0.0.1",
                                       "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                       "--local-directory", str(tmp)], env=ENV, cwd=str(ROOT),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return address, procs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(tmp: pathlib.Path, workers: int = 2) -> str:
    port = _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--object-store-memory", str(200 << 20), "--disable-usage-stats"]
    subprocess.run([str(BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "0",
                    "--include-dashboard", "false", "--temp-dir", str(tmp / "ray"), *common],
                   env=ENV, cwd=str(ROOT), check=True, capture_output=True)
    address = f"127.0.0.1:{port}"
    for _ in range(workers):
        subprocess.run([str(BIN / "ray"), "start", "--address", address, "--num-cpus", "1", *common],
                       env=ENV, cwd=str(ROOT), check=True, capture_output=True)
    return address


def stop_ray():
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=ENV, capture_output=True)


class DaskEngine:
    name = "dask"

    def __init__(self, tmp):
        t0 = time.perf_counter()
        self.address, self.procs = start_dask(tmp)
        from distributed import Client
        self.client = Client(self.address, set_as_default=False, timeout=30)
        self.client.wait_for_workers(2, timeout=60)
        self.startup = time.perf_counter() - t0

    def map(self, fn, *columns):
        from pc_node.compute import Compute   # the node's own seam (scatter, then map)
        return Compute(self.address, self.client).map_batches(fn, list(zip(*columns)))

    def one(self, fn, *args):
        return self.client.submit(fn, *args, pure=False).result()

    def close(self):
        self.client.close()
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            p.wait(10)


class RayEngine:
    name = "ray"

    def __init__(self, tmp):
        import ray
        t0 = time.perf_counter()
        address = start_ray(tmp)
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        while ray.cluster_resources().get("CPU", 0) < 2:
            time.sleep(0.05)
        self.ray = ray
        self._remote = {}
        self.one(noop, 0)   # first task starts the worker processes
        self.startup = time.perf_counter() - t0

    def _r(self, fn):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1)(fn)
        return self._remote[fn]

    def map(self, fn, *columns):
        r = self._r(fn)
        return self.ray.get([r.remote(*args) for args in zip(*columns)])

    def one(self, fn, *args):
        return self.ray.get(self._r(fn).remote(*args))

    def close(self):
        self.ray.shutdown()
        stop_ray()


# ----- workloads ------------------------------------------------------------------------------------
def psi_batches(n: int, batch: int = 8192):
    from pc_node.psi import best_backend
    be = best_backend()
    pts = be.hash_to_points([f"id{i}" for i in range(n)], b"bench")
    scalar = be.random_scalar()
    return be, scalar, [pts[lo:lo + batch] for lo in range(0, n, batch)]


def bfv_parts(slots: int):
    from pc_node.secure_agg import get_backend
    from pc_node.secure_agg.bfv import TASK_CHUNKS, _n_chunks, _padded_chunks
    from pc_node.secure_agg.bfv_keys import generate_keypair
    _, secret = generate_keypair()
    be = get_backend("bfv")
    rng = np.random.default_rng(1)
    values = rng.integers(0, 10 ** 9, slots).tolist()
    parts = _padded_chunks(values, _n_chunks(slots))
    public = secret.public.serialize()
    return be, secret, values, public, [parts[i:i + TASK_CHUNKS] for i in range(0, len(parts), TASK_CHUNKS)]


def run_engine(engine, psi, bfv, out: dict):
    from pc_node.compute import scalarmult_task
    from pc_node.secure_agg.bfv import encrypt_parts
    be, scalar, batches = psi
    local_pts = out["local_psi_result"]
    t0 = time.perf_counter()
    for _ in range(20):
        engine.one(noop, 0)
    one_ms = (time.perf_counter() - t0) / 20 * 1000
    t0 = time.perf_counter()
    engine.map(noop, list(range(200)))
    map_ms = (time.perf_counter() - t0) / 200 * 1000
    engine.map(scalarmult_task, [be.name] * 4, [scalar] * 4, batches[:4])   # warm every worker's imports
    t0 = time.perf_counter()
    res = engine.map(scalarmult_task, [be.name] * len(batches), [scalar] * len(batches), batches)
    psi_s = time.perf_counter() - t0
    same = np.array_equal(np.concatenate(res), local_pts)
    hbe, secret, values, public, groups = bfv
    engine.map(encrypt_parts, [public] * 4, groups[:4])
    t0 = time.perf_counter()
    blobs = [b for g in engine.map(encrypt_parts, [public] * len(groups), groups) for b in g]
    bfv_s = time.perf_counter() - t0
    ok = _decrypts_to(hbe, secret, blobs, values)
    n = sum(len(b) for b in batches)
    print(f"{engine.name:5s} startup_s={engine.startup:.2f} one_task_ms={one_ms:.2f} mapped_task_ms={map_ms:.2f} "
          f"psi_points_per_s={n / psi_s:,.0f} psi_identical={same} bfv_s={bfv_s:.2f} bfv_decrypts={ok}", flush=True)


def _decrypts_to(hbe, secret, blobs, values) -> bool:
    import tenseal as ts
    from pc_node.secure_agg.bfv import BfvCipherVector
    pub = secret.public
    cv = BfvCipherVector(pub, [ts.bfv_vector_from(pub.ctx, b) for b in blobs], len(values))
    from pc_node.secure_agg.bfv_keys import decrypt
    return list(decrypt(secret, cv)) == values


def run_psi(n: int, address: str | None):
    from pc_node.compute import Compute
    from pc_node.psi import intersect
    rng = np.random.default_rng(7)
    a = [f"{x:018d}" for x in rng.choice(10 ** 12, n, replace=False)]
    b = a[: n // 2] + [f"x{x:017d}" for x in range(n - n // 2)]
    compute = Compute.connect(address, ("psi_scalars",)) if address else Compute.local()
    t0 = time.perf_counter()
    found = intersect(a, b, chunk_size=16384, backend=compute.psi_backend()).intersection
    dt = time.perf_counter() - t0
    compute.close()
    return found, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="dask,ray")
    ap.add_argument("--points", type=int, default=262144)
    ap.add_argument("--slots", type=int, default=131072)
    ap.add_argument("--psi", type=int, default=0, help="also a whole N × N ECDH PSI, cluster path vs local")
    ap.add_argument("--psi-repeat", type=int, default=1, help="local/cluster pairs of the whole PSI")
    ap.add_argument("--psi-only", action="store_true", help="only the whole PSI (skip the batch measurements)")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    if args.psi_only:
        if not args.psi:
            ap.error("--psi-only needs --psi N")
        args.engines = "dask"
    else:
        psi = psi_batches(args.points)
        bfv = bfv_parts(args.slots)
        be, scalar, batches = psi
        t0 = time.perf_counter()
        out = {"local_psi_result": np.concatenate([be.scalarmult_batch(scalar, b) for b in batches])}
        psi_s = time.perf_counter() - t0
        from pc_node.secure_agg.bfv import encrypt_parts
        hbe, secret, values, public, groups = bfv
        t0 = time.perf_counter()
        blobs = [b for g in groups for b in encrypt_parts(public, g)]
        bfv_s = time.perf_counter() - t0
        print(f"local startup_s=0 psi_points_per_s={args.points / psi_s:,.0f} (threads: all cores) "
              f"bfv_s={bfv_s:.2f} (one thread) bfv_decrypts={_decrypts_to(hbe, secret, blobs, values)}", flush=True)
    for name in [e for e in args.engines.split(",") if e]:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"pc-bench-{name}-"))
        engine = None
        try:
            engine = (DaskEngine if name == "dask" else RayEngine)(tmp)
            if not args.psi_only:
                run_engine(engine, psi, bfv, out)
            for _ in range(args.psi_repeat if args.psi and name == "dask" else 0):
                size_l, local_s = run_psi(args.psi, None)           # alternating: the load drifts
                size_c, cluster_s = run_psi(args.psi, engine.address)
                print(f"psi {args.psi}x{args.psi} local_s={local_s:.1f} cluster_s={cluster_s:.1f} "
                      f"overhead={(cluster_s / local_s - 1) * 100:+.1f}% "
                      f"found={len(size_c)} identical={size_l == size_c} "
                      f"load={os.getloadavg()[0]:.1f}", flush=True)
        finally:
            if engine is not None:
                engine.close()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
