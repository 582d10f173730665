"""Where a node's heavy batches run: in this process, or on a Dask distributed cluster.

``compute = "local"`` (default) or a scheduler address (``tcp://host:port``, ``tls://host:port``)
in node.toml. :class:`Compute` is the seam: ``map_batches(fn, batches)`` runs ``fn`` over each
batch — here, or as one Dask task each — and returns the results in order. Protocol cores never
import it; the node hands them what it allows (see docs/compute.md):

* :meth:`Compute.psi_backend` — an :class:`~pc_node.psi.EcBackend` for a job's PSI session whose
  scalar multiplications go to the cluster (they carry the job's secret scalar), or ``None``
  (the local best backend) unless ``psi_scalars`` may leave the node;
* :meth:`Compute.encrypt` — HE encryption of a value vector; big BFV vectors go to the cluster
  (under the requester's *public* key, but the plaintext values are the agency's secrets) only
  when ``values`` may leave the node.

What may leave is ``compute_secrets`` (default: nothing; needs ``compute_trusted = true``, the
operator's statement that the cluster is inside the agency's trust boundary). HE secret keys
never leave: no code path sends one, and a config that asks for it is refused.

Worker functions (:func:`scalarmult_task`, ``pc_node.secure_agg.bfv.encrypt_parts``) are plain
module functions, so workers import this module (the project must be on their ``PYTHONPATH``) rather than
unpickling code sent by the node.
"""
from __future__ import annotations

import collections
import contextlib
import ipaddress
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from pc_common.errors import FailedPrecondition, InvalidInput, PcError
from pc_node.psi.curve import EcBackend, best_backend, get_backend
from pc_node.psi.encoding import as_points

LOCAL = "local"
SECRETS = ("psi_scalars", "values")          # what an operator may let go to a trusted cluster
NEVER = ("he_secret_keys",)                  # what no setting lets go
#: Points per cluster task (a task costs a few ms of scheduling, 8k points ~40–80 ms of EC work),
#: and the fewest points of one call worth a round trip.
PSI_TASK_POINTS = 8192
PSI_MIN_POINTS = 2048
#: Calls of one session that may wait on the workers at once (16k-point chunks: 4 MiB in all).
PSI_IN_FLIGHT = 8
CONNECT_TIMEOUT_S = 10


def check_settings(where: str, address: Any, trusted: Any, secrets: Any) -> tuple[str, bool, tuple[str, ...]]:
    """Validate the node's compute settings; one clear line (InvalidInput) for a bad one."""
    if not isinstance(address, str) or not address.strip():
        raise InvalidInput(f'{where}: compute must be "local" or a Dask scheduler address like "tcp://10.0.0.5:8786"')
    address = address.strip()
    if address != LOCAL:
        parts = urlsplit(address)
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None or parts.path:
            raise InvalidInput(f'{where}: compute must be "local" or a Dask scheduler address like '
                               f'"tcp://10.0.0.5:8786" (got {address!r})')
    if not isinstance(trusted, bool):
        raise InvalidInput(f"{where}: compute_trusted must be true or false")
    if secrets is None:
        secrets = list(SECRETS) if trusted else []
    if not isinstance(secrets, (list, tuple)) or not all(isinstance(s, str) for s in secrets):
        raise InvalidInput(f"{where}: compute_secrets must be a list of {', '.join(SECRETS)}")
    for s in secrets:
        if s in NEVER:
            raise InvalidInput(f"{where}: compute_secrets cannot include {s!r}: HE secret keys never leave the node")
        if s not in SECRETS:
            raise InvalidInput(f"{where}: unknown compute_secrets entry {s!r}; allowed: {', '.join(SECRETS)}")
    if secrets and not trusted:
        raise InvalidInput(f"{where}: compute_secrets needs compute_trusted = true (the cluster inside the "
                           "agency's trust boundary)")
    if secrets and address != LOCAL and urlsplit(address).scheme == "tcp" and not _loopback(address):
        raise InvalidInput(f"{where}: secrets would cross the network unencrypted to {address}; use a tls:// "
                           "scheduler address with [compute_tls]")
    return address, trusted, tuple(dict.fromkeys(secrets))


def _loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# ----- worker side ----------------------------------------------------------------------------------
def scalarmult_task(backend_name: str, scalar: bytes, points: np.ndarray) -> np.ndarray:
    """On a worker: ``points`` times ``scalar`` with the named EC backend (one worker thread)."""
    os.environ.setdefault("PC_PSI_WORKERS", "1")   # the cluster gives parallelism; no pool per task
    return get_backend(backend_name).scalarmult_batch(scalar, points)


def _apply(fn: Callable, args: tuple):
    return fn(*args)


@contextlib.contextmanager
def _cluster_errors(kind: str):
    try:
        yield
    except PcError:
        raise                # the core's own one-line error (e.g. a point of small order)
    except Exception as exc:  # noqa: BLE001 - a worker's error, without its arguments
        raise FailedPrecondition(f"a {kind} task failed on the compute cluster ({type(exc).__name__})") from None


# ----- the seam -------------------------------------------------------------------------------------
class Compute:
    """Runs batches locally or on a Dask cluster; counts what it sent (``submitted``, by kind)."""

    def __init__(self, address: str = LOCAL, client: Any = None, secrets: Sequence[str] = ()):
        self.address = address
        self._client = client
        self.secrets = frozenset(secrets)
        self.submitted: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    @classmethod
    def local(cls) -> "Compute":
        return cls()

    @classmethod
    def connect(cls, address: str, secrets: Sequence[str] = (), security: Any = None,
                timeout: float | None = None) -> "Compute":
        """A connection to the scheduler at ``address``; FailedPrecondition (one line) if unreachable."""
        try:
            from distributed import Client
        except ImportError:
            raise FailedPrecondition("compute cluster needs the 'distributed' package (Dask); "
                                     "install it or set compute = \"local\"") from None
        try:
            client = Client(address, timeout=timeout or CONNECT_TIMEOUT_S, set_as_default=False, security=security)
        except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, CommClosedError …
            raise FailedPrecondition(f"compute cluster at {address} is not reachable "
                                     f"({type(exc).__name__})") from None
        return cls(address, client, secrets)

    @classmethod
    def from_config(cls, config) -> "Compute":
        """The node's compute, from its config (refused in one line if the settings are bad)."""
        where = "node config"
        address, _trusted, secrets = check_settings(where, config.compute, config.compute_trusted,
                                                    config.compute_secrets)
        if address == LOCAL:
            return cls.local()
        if urlsplit(address).scheme == "tls" and config.compute_tls is None:
            raise InvalidInput(f"{where}: a tls:// compute address needs [compute_tls] with ca, cert and key")
        security = None
        if config.compute_tls is not None:
            if not isinstance(config.compute_tls, tuple) or len(config.compute_tls) != 3:
                raise InvalidInput(f"{where}: [compute_tls] must have ca, cert and key")
            from distributed.security import Security
            ca, cert, key = config.compute_tls
            security = Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key),
                                require_encryption=True)
        return cls.connect(address, secrets, security)

    @property
    def is_local(self) -> bool:
        return self._client is None

    def may_send(self, secret: str) -> bool:
        return self._client is not None and secret in self.secrets

    def map_batches(self, fn: Callable, batches: Sequence[tuple], kind: str = "batch") -> list:
        """``[fn(*b) for b in batches]``, on the cluster when there is one (results in order)."""
        if self._client is None or not batches:
            return [fn(*b) for b in batches]
        return self.gather(self.submit_batches(fn, batches, kind), kind)

    def submit_batches(self, fn: Callable, batches: Sequence[tuple], kind: str = "batch") -> list:
        """Start ``fn(*b)`` for each batch on the cluster without waiting: its futures, for
        :meth:`gather`. Callers that do not need a result at once keep several calls in flight."""
        if self._client is None:
            raise FailedPrecondition("submit_batches needs a compute cluster")
        with self._lock:
            self.submitted[kind] += len(batches)
        with _cluster_errors(kind):
            # Arguments go to the workers directly (scatter), not inside the task graph through
            # the scheduler: measured 85–98k → 104–115k points/s on the PSI batches.
            data = self._client.scatter(list(batches), hash=False)
            return self._client.map(_apply, [fn] * len(batches), data, pure=False)

    def gather(self, futures: list, kind: str = "batch") -> list:
        """The results of :meth:`submit_batches`, in order (waits for them)."""
        with _cluster_errors(kind):
            return self._client.gather(futures)

    # -- what the node offloads
    def psi_backend(self, curve: str = "x25519") -> EcBackend | None:
        """The EC backend for a PSI session: scalar multiplications on the cluster when the job's
        scalar may go there, else ``None`` (the session then picks the local best backend)."""
        if not self.may_send("psi_scalars"):
            return None
        return ClusterEcBackend(best_backend(curve), self)

    def encrypt(self, backend, pub, values):
        """``backend.encrypt(pub, values)``; big BFV vectors through the cluster when values may go."""
        if backend.name == "bfv" and self.may_send("values"):
            return backend.encrypt(pub, values, compute=self)
        return backend.encrypt(pub, values)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return f"<Compute {self.address} secrets={sorted(self.secrets)}>"


class ClusterEcBackend(EcBackend):
    """An EC backend whose scalar multiplications run as cluster tasks of ``PSI_TASK_POINTS``
    points each, with the same backend on the workers; everything else stays local.

    :meth:`scalarmult_later` returns at once with the tasks under way, so a session that needs a
    result only later (its own chunks one ahead, the provider's chunks until the end) keeps the
    workers busy while it hashes or receives the next chunk; at most ``PSI_IN_FLIGHT`` calls wait
    on the workers, the oldest is fetched when one more starts.
    """

    def __init__(self, inner: EcBackend, compute: Compute):
        self.inner, self.compute = inner, compute
        self.name, self.curve = inner.name, inner.curve
        self.scalar_len, self.lane_width = inner.scalar_len, inner.lane_width
        self._in_flight: collections.deque[_Later] = collections.deque()
        self._lock = threading.Lock()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def random_scalar(self, rng=None) -> bytes:
        return self.inner.random_scalar(rng)

    def validate_points(self, points: np.ndarray) -> None:
        self.inner.validate_points(points)

    def hash_to_points(self, ids, domain: bytes) -> np.ndarray:
        return self.inner.hash_to_points(ids, domain)

    def _mul(self, scalars, inp, out, lo, hi) -> bool:  # pragma: no cover - scalarmult_batch is overridden
        return self.inner._mul(scalars, inp, out, lo, hi)

    def scalarmult_batch(self, scalar: bytes, points):
        as_bytes = not isinstance(points, np.ndarray)
        out = self.scalarmult_later(scalar, as_points(points))()
        return out.tobytes() if as_bytes else out

    def scalarmult_later(self, scalar: bytes, points: np.ndarray) -> Callable[[], np.ndarray]:
        inp = np.ascontiguousarray(as_points(points))
        key = self.check_scalar(scalar)
        if len(inp) < PSI_MIN_POINTS:                    # too small to pay for a round trip
            out = self.inner.scalarmult_batch(key, inp)
            return lambda: out
        self.inner.validate_points(inp)                  # a bad point fails here, at its chunk
        tasks = max(2, -(-len(inp) // PSI_TASK_POINTS))
        step = -(-len(inp) // tasks)
        batches = [(self.inner.name, key, inp[lo:lo + step]) for lo in range(0, len(inp), step)]
        later = _Later(self.compute, self.compute.submit_batches(scalarmult_task, batches, kind="psi_scalarmult"))
        with self._lock:
            while self._in_flight and self._in_flight[0].done:
                self._in_flight.popleft()
            self._in_flight.append(later)
            oldest = self._in_flight.popleft() if len(self._in_flight) > PSI_IN_FLIGHT else None
        if oldest is not None:
            oldest()                                     # bounds what the workers hold for this session
        return later

    def __repr__(self) -> str:
        return f"<ClusterEcBackend {self.inner.name}/{self.curve} on {self.compute.address}>"


class _Later:
    """One scalar multiplication under way on the cluster; calling it waits for the points (once)."""

    def __init__(self, compute: Compute, futures: list):
        self._compute, self._futures = compute, futures
        self._out: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self._out is not None

    def __call__(self) -> np.ndarray:
        with self._lock:
            if self._out is None:
                parts = self._compute.gather(self._futures, kind="psi_scalarmult")
                self._futures = None                     # lets the workers drop the results
                self._out = np.concatenate(parts)
            return self._out
