"""A node's sharing policy: default deny, enforced at the provider for every request.

policy.toml::

    [[grants]]
    dataset = "vehicles"
    requester = "civil_affairs"
    purposes = ["social_assistance.eligibility"]
    approval = "auto"                 # or "manual" (事前审批)
    reveal = "verdict"                # the most a requester may see: verdict | reasons
    [grants.columns]                  # column -> join_key|predicate|aggregate|masked|plaintext|none
    id_number = "join_key"
    vehicle_type = "predicate"
    [grants.quota]
    jobs_per_hour = 60
    jobs_per_day = 500
    subjects_per_hour = 1000000
    subjects_per_day = 5000000

Column uses are ranked: a grant of ``plaintext`` ≥ ``masked`` ≥ ``aggregate`` ≥ ``predicate``
allows every lower use; ``join_key`` is for the key column only; ``none`` allows nothing.
The file is re-read when it changes (checked on every request).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
import tomllib

from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.identity import check_name

USES = ("none", "join_key", "predicate", "aggregate", "masked", "plaintext")
RANK = {"none": 0, "predicate": 1, "aggregate": 2, "masked": 3, "plaintext": 4}
QUOTA_KEYS = ("jobs_per_hour", "jobs_per_day", "subjects_per_hour", "subjects_per_day")
DEFAULT_QUOTA = {"jobs_per_hour": 120, "jobs_per_day": 1000, "subjects_per_hour": 5_000_000,
                 "subjects_per_day": 20_000_000}


@dataclasses.dataclass(frozen=True)
class Grant:
    dataset: str
    requester: str
    purposes: tuple[str, ...]
    columns: dict
    approval: str = "auto"
    reveal: str = "verdict"
    quota: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_QUOTA))

    def allows(self, column: str, use: str, key_column: str) -> bool:
        granted = self.columns.get(column, "none")
        if use == "join_key":
            return column == key_column and granted in ("join_key", "plaintext")
        if granted == "join_key":
            return False
        return RANK.get(granted, 0) >= RANK[use] > 0


def parse_policy(text: str, source: str = "policy.toml") -> list[Grant]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source}: not valid TOML ({exc})") from None
    unknown = set(doc) - {"grants"}
    if unknown:
        raise InvalidInput(f"{source}: unknown key '{sorted(unknown)[0]}'")
    grants = []
    for i, g in enumerate(doc.get("grants", [])):
        where = f"{source}: grant #{i + 1}"
        bad = set(g) - {"dataset", "requester", "purposes", "columns", "approval", "reveal", "quota"}
        if bad:
            raise InvalidInput(f"{where}: unknown field '{sorted(bad)[0]}'")
        try:
            check_name("dataset", g.get("dataset", ""))
            check_name("requester", g.get("requester", ""))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        purposes = g.get("purposes", [])
        if not purposes or not all(isinstance(p, str) and p for p in purposes):
            raise InvalidInput(f"{where}: 'purposes' must be a non-empty list of strings")
        columns = g.get("columns", {})
        for c, use in columns.items():
            if use not in USES:
                raise InvalidInput(f"{where}: column '{c}': use must be one of {', '.join(USES)}")
        if g.get("approval", "auto") not in ("auto", "manual"):
            raise InvalidInput(f"{where}: approval must be auto or manual")
        if g.get("reveal", "verdict") not in ("verdict", "reasons"):
            raise InvalidInput(f"{where}: reveal must be verdict or reasons")
        quota = dict(DEFAULT_QUOTA)
        for k, v in (g.get("quota") or {}).items():
            if k not in QUOTA_KEYS or not isinstance(v, int) or v < 0:
                raise InvalidInput(f"{where}: quota '{k}' must be one of {', '.join(QUOTA_KEYS)} with a count >= 0")
            quota[k] = v
        grants.append(Grant(g["dataset"], g["requester"], tuple(purposes), dict(columns),
                            g.get("approval", "auto"), g.get("reveal", "verdict"), quota))
    return grants


class Policy:
    """The node's current grants, re-read when the file changes."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._grants: list[Grant] = []
        self.reload()

    def reload(self) -> list[Grant]:
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._grants, self._stamp = [], None   # no file: deny everything
                return []
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._grants = parse_policy(self.path.read_text(encoding="utf-8"), self.path.name)
                self._stamp = stamp
            return list(self._grants)

    def grants(self) -> list[Grant]:
        try:
            return self.reload()
        except InvalidInput:
            # A broken edit must not open anything up: keep the last good grants.
            with self._lock:
                return list(self._grants)

    def grants_for(self, dataset: str) -> list[Grant]:
        return [g for g in self.grants() if g.dataset == dataset]

    def authorise(self, dataset: str, key_column: str, requester: str, purpose: str,
                  uses: dict[str, str], reveal: str = "verdict") -> Grant:
        """The grant allowing ``uses`` (column -> use), or PermissionDenied naming what is missing."""
        candidates = [g for g in self.grants() if g.dataset == dataset and g.requester == requester]
        if not candidates:
            raise PermissionDenied(f"no grant for requester '{requester}' on dataset '{dataset}'")
        candidates = [g for g in candidates if purpose in g.purposes]
        if not candidates:
            raise PermissionDenied(f"purpose '{purpose}' is not granted to '{requester}' on dataset '{dataset}'")
        for g in candidates:
            denied = [c for c, u in uses.items() if not g.allows(c, u, key_column)]
            if not denied and (reveal == "verdict" or g.reveal == "reasons"):
                return g
        g = candidates[0]
        denied = [f"{c} as {u}" for c, u in uses.items() if not g.allows(c, u, key_column)]
        if denied:
            raise PermissionDenied(f"dataset '{dataset}' does not allow column use: {', '.join(denied)}")
        raise PermissionDenied(f"dataset '{dataset}' allows reveal 'verdict' only, not per-criterion reasons")
