#!/usr/bin/env python3
"""Benchmark: two-party PSI end to end through a real sandbox, against other libraries, same sets.

Builds two sets of N valid identity numbers with 50 % overlap, brings a sandbox up
(coordinator and two nodes, separate processes, loopback, mutual TLS), runs `Federation.psi`
once per protocol (KKRT16, KKRT16 with the national profile, ECDH) and checks each result against the plaintext intersection;
then, on the same sets in the same run:

* OpenMined PSI (`openmined-psi`, P-256, reveal_intersection, RAW container) as two
  concurrent processes, client and server, exchanging serialised messages over a pipe;
* SecretFlow PSI RR22 and KKRT (`spu` 0.9.5 wheel: its `libpsi`/`libspu` extension modules are
  loaded without the JAX front end) as two processes linked over loopback (brpc), CSV in and
  out — where the wheel is present (`--spu DIR`, the folder holding `spu/`, or an installed
  `spu`); otherwise one line says why it did not run.

Every figure is items **per side**: N / wall-clock seconds (a peer's wall: from the moment both
of its processes hold their input to the receiver holding the intersection; ours: the SDK call,
prepare to results file). Last line:

    psi n=N ours_items_per_s=… best_peer=… best_peer_items_per_s=… ratio=…

with ``ours`` the default protocol (KKRT16 for two parties).
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import pathlib
import shutil
import socket
import sys
import time
import types


def write_sets(root: pathlib.Path, n: int, seed: int) -> tuple[set[str], set[str]]:
    from pc_devkit.synth_city import random_identity_numbers
    pool = list(dict.fromkeys(random_identity_numbers(int(n * 1.6) + 1000, seed)))
    if len(pool) < n + n // 2:
        raise SystemExit("not enough distinct identifiers; use another seed")
    xs, ys = pool[:n], pool[n // 2:n + n // 2]
    for agency, name, ids in (("civil_affairs", "applicants", xs), ("public_security", "vehicles", ys)):
        (root / agency).mkdir(parents=True, exist_ok=True)
        with open(root / agency / f"{name}.csv", "w", encoding="utf-8") as fh:
            fh.write("id_number\n")
            fh.writelines(f"{i}\n" for i in ids)
    return set(xs), set(ys)


# ----- OpenMined PSI: client and server in two processes --------------------------------------------
def _om_server(conn, ys: list[str], n_client: int) -> None:
    import private_set_intersection.python as psi
    server = psi.server.CreateWithNewKey(True)
    conn.send("ready")
    request = psi.Request()
    request.ParseFromString(conn.recv_bytes())
    setup = server.CreateSetupMessage(1e-9, n_client, ys, psi.DataStructure.RAW)
    conn.send_bytes(setup.SerializeToString())
    conn.send_bytes(server.ProcessRequest(request).SerializeToString())


def openmined(xs: list[str], ys: list[str]) -> tuple[float | None, str]:
    if importlib.util.find_spec("private_set_intersection") is None:
        return None, "not installed (pip install openmined-psi)"
    ctx = mp.get_context("spawn")
    control, client_ctl = ctx.Pipe()     # parent <-> client: go, and the intersection size
    c_end, s_end = ctx.Pipe()            # client <-> server: the protocol's messages
    server = ctx.Process(target=_om_server, args=(s_end, ys, len(xs)), daemon=True)
    client = ctx.Process(target=_om_client_relay, args=(c_end, client_ctl, xs), daemon=True)
    server.start()
    client.start()
    client_ready = control.recv()
    assert client_ready == "ready"
    t = time.perf_counter()
    control.send("go")
    found = control.recv()
    wall = time.perf_counter() - t
    server.join(30)
    client.join(30)
    if found != len(set(xs) & set(ys)):
        return None, "wrong intersection size"
    return wall, "P-256, two processes over a pipe"


def _om_client_relay(peer, control, xs: list[str]) -> None:
    """The client: talks to the server on ``peer``, to the parent on ``control``."""
    import private_set_intersection.python as psi
    client = psi.client.CreateWithNewKey(True)
    assert peer.recv() == "ready"                 # the server holds its set
    control.send("ready")
    control.recv()                                # go
    peer.send_bytes(client.CreateRequest(xs).SerializeToString())
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(peer.recv_bytes())
    response.ParseFromString(peer.recv_bytes())
    control.send(len(client.GetIntersection(setup, response)))


# ----- SecretFlow PSI (spu 0.9.5 wheel, without JAX) ------------------------------------------------
def spu_root(given: str | None) -> str | None:
    """The folder that holds the ``spu`` package, found without importing it (its
    ``__init__`` imports JAX)."""
    if given:
        return given if (pathlib.Path(given) / "spu" / "libpsi.so").exists() else None
    spec = importlib.util.find_spec("spu")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(pathlib.Path(list(spec.submodule_search_locations)[0]).parent)


def _load_spu(root: str):
    pkg = types.ModuleType("spu")
    pkg.__path__ = [os.path.join(root, "spu")]
    sys.modules["spu"] = pkg                      # the extension modules only, not spu/__init__
    import spu.libpsi as libpsi
    import spu.libspu as libspu
    return libspu, libpsi


def _spu_party(root: str, rank: int, ports: list[int], protocol: str, inp: str, out: str, conn) -> None:
    quiet = os.open(os.devnull, os.O_WRONLY)      # libpsi logs every stage to stdout
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    libspu, libpsi = _load_spu(root)
    desc = libspu.link.Desc()
    desc.id = "bench"
    for i, port in enumerate(ports):
        desc.add_party(f"p{i}", f"127.0.0.1:{port}")
    conf = libpsi.PsiExecuteConfig()
    conf.protocol_conf = libpsi.PsiProtocolConfig(
        protocol=getattr(libpsi.PsiProtocol, f"PROTOCOL_{protocol}"), receiver_rank=0, broadcast_result=False)
    conf.input_params = libpsi.InputParams(path=inp, selected_keys=["id_number"], keys_unique=True)
    conf.output_params = libpsi.OutputParams(path=out, disable_alignment=True)
    conn.send("ready")
    conn.recv()                                   # go
    lctx = libspu.link.create_brpc(desc, rank)
    report = libpsi.psi_execute(conf, lctx)
    conn.send(report.intersection_count)


def _free_ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def secretflow(root: str, protocol: str, work: pathlib.Path, xs, ys) -> float:
    ctx = mp.get_context("spawn")
    inputs = []
    for rank, ids in enumerate((xs, ys)):
        path = work / f"sf_in_{rank}.csv"
        path.write_text("id_number\n" + "".join(f"{i}\n" for i in ids))
        inputs.append(str(path))
    ports = _free_ports(2)
    pipes, procs = [], []
    for rank in range(2):
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_spu_party, daemon=True, args=(root, rank, ports, protocol, inputs[rank],
                                                              str(work / f"sf_out_{rank}.csv"), theirs))
        p.start()
        pipes.append(mine)
        procs.append(p)
    for c in pipes:
        assert c.recv() == "ready"
    t = time.perf_counter()
    for c in pipes:
        c.send("go")
    counts = [c.recv() for c in pipes]
    wall = time.perf_counter() - t
    for p in procs:
        p.join(30)
    if counts[0] != len(set(xs) & set(ys)):
        raise RuntimeError(f"SecretFlow {protocol}: wrong intersection size {counts[0]}")
    return wall


# ----- ours ------------------------------------------------------------------------------------------
def ours(city: pathlib.Path, work: pathlib.Path, truth: set[str], protocols: list[str],
         repeat: int = 1) -> dict[str, float]:
    from pc_client.sandbox import Sandbox
    sb = Sandbox(city)
    t = time.perf_counter()
    sb.up(log=lambda m: None, timeout=1800)
    print(f"sandbox up with both datasets imported: {time.perf_counter() - t:.1f} s", flush=True)
    walls = {}
    try:
        with sb.federation("analyst@civil_affairs") as fed:
            for protocol in [p for p in protocols for _ in range(repeat)]:
                out = work / f"psi_out_{protocol}.csv"
                t = time.perf_counter()
                engine, _, crypto = protocol.partition("-")       # "kkrt-gm": the national profile
                res = fed.psi(["civil_affairs.applicants", "public_security.vehicles"], out=out, protocol=engine,
                              crypto=crypto)
                wall = time.perf_counter() - t
                walls[protocol] = min(wall, walls.get(protocol, wall))   # best of the repeats
                got = set(out.read_text().split()[1:])
                if got != truth:
                    raise SystemExit(f"ours ({protocol}): MISMATCH with the plaintext intersection")
                print(f"ours {protocol}: {wall:.2f} s, intersection {len(got):,} (exact); "
                      f"coordinator job time {res.summary.get('total_s')} s", flush=True)
        print("peak RSS per process (VmHWM): " + ", ".join(
            f"{name} {peak_rss_mb(pid):.0f} MB" for name, pid in sb.state()["pids"].items()), flush=True)
    finally:
        sb.down(quiet=True)
    return walls


def peak_rss_mb(pid: int) -> float:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="items per side")
    ap.add_argument("--dir", default="bench-psi")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--protocols", default="kkrt,ecdh",
                    help="ours, comma-separated (the first is 'ours'): kkrt, kkrt-gm (--crypto gm), ecdh")
    ap.add_argument("--spu", default=None, help="folder holding the spu 0.9.5 package (default: installed spu)")
    ap.add_argument("--repeat", type=int, default=1, help="jobs per protocol in the same sandbox (best counts)")
    ap.add_argument("--peers", default="openmined,rr22,kkrt",
                    help="peers to run: openmined, rr22, kkrt (SecretFlow's); empty for none")
    args = ap.parse_args()

    n = args.n
    work = pathlib.Path(args.dir).resolve()
    city = work / f"sets-{n}-{args.seed}"
    from pc_client.sandbox import Sandbox
    if Sandbox(city).running():
        Sandbox(city).down(quiet=True)
    shutil.rmtree(city, ignore_errors=True)
    xs, ys = write_sets(city, n, args.seed)
    truth = xs & ys
    protocols = [p for p in args.protocols.split(",") if p]
    walls = ours(city, work, truth, protocols, max(1, args.repeat))
    for p in protocols:
        print(f"ours {p}: {n / walls[p]:,.0f} items/s per side")
    peers: dict[str, float] = {}
    wanted = {p for p in args.peers.split(",") if p}
    sx, sy = sorted(xs), sorted(ys)
    if "openmined" in wanted:
        wall, how = openmined(sx, sy)
        if wall is None:
            print(f"OpenMined PSI: unavailable ({how})")
        else:
            peers["openmined"] = n / wall
            print(f"OpenMined PSI ({how}): {wall:.2f} s, {n / wall:,.0f} items/s per side", flush=True)
    sf = [p.upper() for p in ("rr22", "kkrt") if p in wanted]
    if sf:
        root = spu_root(args.spu)
        if root is None:
            print("SecretFlow PSI: unavailable (no spu 0.9.5 package: pip download spu==0.9.5 --no-deps, "
                  "unzip it and pass --spu DIR; its JAX dependency is not needed)")
        else:
            for proto in sf:
                try:
                    wall = secretflow(root, proto, work, sx, sy)
                except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
                    print(f"SecretFlow {proto}: unavailable ({type(exc).__name__}: {exc})")
                    continue
                peers[f"secretflow_{proto.lower()}"] = n / wall
                print(f"SecretFlow {proto} (spu 0.9.5, two processes, brpc on loopback): {wall:.2f} s, "
                      f"{n / wall:,.0f} items/s per side", flush=True)
    ours_rate = n / walls[protocols[0]]
    best = max(peers, key=peers.get) if peers else "none"
    best_rate = peers.get(best, float("nan"))
    print(f"psi n={n} ours_items_per_s={ours_rate:.0f} best_peer={best} best_peer_items_per_s={best_rate:.0f} "
          f"ratio={ours_rate / best_rate if peers else float('nan'):.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
