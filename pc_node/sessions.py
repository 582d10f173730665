"""A node's in-memory job sessions (PSI sessions, lookup queries: EC keys, identifier lists).

They live only as long as their job: ``job.cleanup`` drops a job's session, and a session
whose job lifetime has ended (the signed spec's ``admission_until``, as remembered at first
sight) is wiped lazily on access and by :meth:`Sessions.expire`, which the node's presence
loop calls on every tick, so keys and identifiers never outlive a job whose cleanup never came.

The table keeps the small mapping interface the steps use (``get``, ``[]``, ``setdefault``,
``pop``, ``in``); every entry carries its deadline.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

#: Lifetime of a session whose job this node has no record of (should not happen: steps
#: check the spec, which records it, before they create a session).
FALLBACK_SECONDS = 24 * 3600


class Sessions:
    def __init__(self, deadline_of: Callable[[str], float | None] = lambda job_id: None,
                 clock: Callable[[], float] = time.time,
                 on_wipe: Callable[[list[str]], None] | None = None):
        self._deadline_of = deadline_of
        self.clock = clock
        self.on_wipe = on_wipe
        self._items: dict[str, tuple[object, float]] = {}
        self._lock = threading.RLock()

    # ----- mapping interface ----------------------------------------------------------
    def __setitem__(self, job_id: str, session: object) -> None:
        with self._lock:
            self._items[job_id] = (session, self._deadline(job_id))

    def setdefault(self, job_id: str, session: object) -> object:
        with self._lock:
            current = self.get(job_id)
            if current is not None:
                return current
            self[job_id] = session
            return session

    def get(self, job_id: str, default=None):
        expired = False
        with self._lock:
            item = self._items.get(job_id)
            if item is not None and self.clock() > item[1]:
                del self._items[job_id]
                item, expired = None, True
        if expired:
            self._wiped([job_id])
        return default if item is None else item[0]

    def __getitem__(self, job_id: str):
        s = self.get(job_id)
        if s is None:
            raise KeyError(job_id)
        return s

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and self.get(job_id) is not None

    def pop(self, job_id: str, default=None):
        with self._lock:
            item = self._items.pop(job_id, None)
        return default if item is None else item[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def deadline(self, job_id: str) -> float | None:
        with self._lock:
            item = self._items.get(job_id)
        return None if item is None else item[1]

    # ----- expiry -----------------------------------------------------------------------
    def expire(self, now: float | None = None) -> list[str]:
        """Wipe every session whose job lifetime has ended; returns their job ids."""
        now = self.clock() if now is None else now
        with self._lock:
            gone = [j for j, (_, deadline) in self._items.items() if now > deadline]
            for j in gone:
                del self._items[j]
        if gone:
            self._wiped(gone)
        return gone

    def _deadline(self, job_id: str) -> float:
        d = self._deadline_of(job_id)
        return float(d) if d is not None else self.clock() + FALLBACK_SECONDS

    def _wiped(self, job_ids: list[str]) -> None:
        if self.on_wipe is not None:
            self.on_wipe(job_ids)
