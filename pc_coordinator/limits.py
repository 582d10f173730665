"""Limits that keep one client from exhausting the coordinator.

* :class:`StreamSlots` bounds the long-lived ``WatchJob`` streams (each holds a server thread
  while it is open): at most ``per_client`` per certificate identity and ``total`` overall,
  well below the server's thread pool, so heartbeats, catalog and directory calls always find
  a thread. Beyond a bound the call is refused at once with RESOURCE_EXHAUSTED (the SDK then
  polls ``GetJob`` instead).
* :func:`check_verification_size` caps criteria × groups of a verification job at validation,
  before any node works on it (the coordinator's masking and garbling are linear in it).
"""
from __future__ import annotations

import threading

from pc_common.errors import InvalidInput, ResourceExhausted
from pc_rules.rules import MAX_CRITERIA as RULE_MAX_CRITERIA

WATCHES_PER_CLIENT = 4
WATCHES_TOTAL = 24
SERVER_THREADS = 64          # the coordinator's gRPC thread pool (create_server's default)

MAX_CRITERIA = RULE_MAX_CRITERIA       # what a rule file may have (64); the product below is the real bound
MAX_GROUPS = 2_000_000
MAX_CRITERIA_X_GROUPS = 8_000_000


class StreamSlots:
    """Counting slots per client identity and overall; ``acquire`` returns a release function."""

    def __init__(self, per_client: int = WATCHES_PER_CLIENT, total: int = WATCHES_TOTAL, what: str = "watch streams"):
        self.per_client, self.total, self.what = per_client, total, what
        self._lock = threading.Lock()
        self._by_client: dict[str, int] = {}
        self._open = 0

    def acquire(self, client: str):
        with self._lock:
            mine = self._by_client.get(client, 0)
            if mine >= self.per_client:
                raise ResourceExhausted(f"too many open {self.what} for '{client}' (at most {self.per_client} at"
                                        " a time); close one or poll GetJob instead")
            if self._open >= self.total:
                raise ResourceExhausted(f"the coordinator has {self._open} open {self.what}, its limit;"
                                        " try again later or poll GetJob instead")
            self._by_client[client] = mine + 1
            self._open += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._open -= 1
                left = self._by_client[client] - 1
                if left:
                    self._by_client[client] = left
                else:
                    del self._by_client[client]
        return release

    def open(self, client: str | None = None) -> int:
        with self._lock:
            return self._open if client is None else self._by_client.get(client, 0)


def check_verification_size(criteria: int, groups: int) -> None:
    """INVALID_ARGUMENT, with the numbers, for a verification beyond the coordinator's caps."""
    if criteria > MAX_CRITERIA:
        raise InvalidInput(f"the rule has {criteria} criteria; a verification may have at most {MAX_CRITERIA}")
    if groups > MAX_GROUPS:
        raise InvalidInput(f"the job has {groups} groups; a verification may have at most {MAX_GROUPS}")
    if criteria * groups > MAX_CRITERIA_X_GROUPS:
        raise InvalidInput(f"the job has {criteria} criteria × {groups} groups = {criteria * groups}; a verification"
                           f" may have at most {MAX_CRITERIA_X_GROUPS} (split the subjects into several jobs)")
