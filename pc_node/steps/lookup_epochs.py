"""Lookup OPRF keys at a provider: one per (dataset, requester) and key epoch, rotated and wiped.

A key epoch is ``floor(now / period)`` with ``period = lookup_epoch_days`` of the node's config
(7 by default) and ``now`` from ``runtime.lookup_clock`` (tests replace it). Each (dataset,
requester) pair gets its own random key for each epoch, created on first use, so

* a requester's filter is useless to another requester (other key, other tags, other label keys);
* a filter stops matching when its epoch ends: the next lookup gets a new snapshot under the
  new key, and the old key is wiped (the stored key record is rewritten without it, and the
  in-memory filters built under it are dropped) once :data:`GRACE_SECONDS` have passed, the
  time a job that fetched its filter just before the rotation has to finish.

Keys are stored SM4-encrypted in the node's store (blob kind ``lookupkey``). The epoch string
a filter carries starts ``e<epoch>.<key id>``; the requester signs it with its blinded points,
and :func:`evaluator` evaluates only under that epoch's key while it lives.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets

from pc_common import clock
from pc_common.errors import FailedPrecondition, InvalidInput
from pc_node.psi import LookupProvider

DAY = 86400
#: After a rotation, the previous epoch's key still answers for this long (jobs in flight).
GRACE_SECONDS = 3600
_EPOCH_RE = re.compile(r"e([0-9]{1,12})\.([0-9a-f]{8})(?:-|\Z)")


def period_seconds(runtime) -> float:
    days = float(runtime.config.lookup_epoch_days)
    if not days > 0:
        raise InvalidInput("lookup_epoch_days must be positive")
    return days * DAY


def current_epoch(runtime) -> int:
    return int(runtime.lookup_clock() // period_seconds(runtime))


def _live_keys(runtime, dataset: str, requester: str) -> tuple[int, dict[int, dict]]:
    """(current epoch, {epoch: key record}) of the pair, rotating and wiping; under lookup_lock."""
    now = runtime.lookup_clock()
    period = period_seconds(runtime)
    epoch = int(now // period)
    name = f"{dataset}/{requester}"
    stored = {}
    if runtime.store.has_blob("lookupkey", name):
        stored = {int(k): v for k, v in json.loads(runtime.store.get_blob("lookupkey", name)).items()}
    live = {e: k for e, k in stored.items()
            if e == epoch or (e == epoch - 1 and now < epoch * period + GRACE_SECONDS)}
    if epoch not in live:
        live[epoch] = {"id": secrets.token_hex(4), "key": secrets.token_bytes(32).hex()}
    if live != stored:
        # The record expires (store.expire_blobs) when its newest key's epoch and grace are over,
        # so the keys of a requester that never comes back do not outlive their epoch either.
        runtime.store.put_blob("lookupkey", name, json.dumps({str(e): k for e, k in live.items()}).encode(),
                               expires_at=clock.iso((max(live) + 1) * period + GRACE_SECONDS))
        wiped = set(stored) - set(live)
        if wiped:
            runtime.audit.append("lookup.rotate", requester=requester, dataset=dataset,
                                 counts={"epoch": epoch, "keys_wiped": len(wiped)})
    # Filters of an epoch that is no longer current (any pair: epochs are the same for all) go too.
    for key, entry in list(runtime.lookup_providers.items()):
        if entry["epoch"] != epoch:
            del runtime.lookup_providers[key]
    return epoch, live


def _labels(runtime, dataset: str, columns: list[str], masked: bool, keys: list[str]) -> dict[str, bytes] | None:
    from pc_node.masking import mask
    if not columns:
        return None
    meta = runtime.store.dataset(dataset)
    names = [c.name for c in meta.columns]
    for col in columns:
        if col not in names:
            raise InvalidInput(f"dataset '{dataset}' has no column '{col}'")
    rows = runtime.store.rows_for_keys(dataset, keys)
    out = {}
    for ident, found in rows.items():
        vals = [[r[names.index(c)] for c in columns] for r in found]
        if masked:
            vals = [[mask(v, "full") if v else v for v in row] for row in vals]
        out[ident] = json.dumps(vals, ensure_ascii=False, separators=(",", ":")).encode()
    return out


def provider_for(runtime, dataset: str, requester: str, columns: list[str], masked: bool) -> LookupProvider:
    """The current epoch's filter of ``dataset`` for ``requester`` (and label columns), built on
    first use in the epoch and updated by delta (unlabelled) or rebuilt when the data change."""
    meta = runtime.store.dataset(dataset)
    cache = runtime.lookup_providers
    cache_key = (dataset, requester, tuple(columns), masked)
    with runtime.lookup_lock:
        epoch, live = _live_keys(runtime, dataset, requester)
        entry = cache.get(cache_key)
        # Imported: the dataset's version; attached: a snapshot of the table (it may change
        # between jobs without the node knowing), so an unchanged table is not read again.
        stamp = runtime.store.change_stamp(dataset)
        if entry is not None and entry["version"] == stamp:
            return entry["provider"]
        keys = runtime.store.keys(dataset)
        if entry is not None and not columns:
            old, new = entry["keys"], set(keys)
            entry["provider"].apply_changes(added=sorted(new - old), removed=sorted(old - new),
                                            dataset_version=str(meta.version))
            entry.update(version=stamp, keys=new)
            return entry["provider"]
        key = live[epoch]
        # The epoch names key, dataset version at build time and label columns, so a rebuild
        # after a restart never pretends to continue another build's delta chain.
        label_tag = hashlib.sha256(json.dumps([columns, masked]).encode()).hexdigest()[:6]
        built = hashlib.sha256(f"{meta.version}/{meta.updated_at}".encode()).hexdigest()[:8]
        name = f"e{epoch}.{key['id']}-{built}-{label_tag}"
        labels = _labels(runtime, dataset, columns, masked, keys)
        provider = LookupProvider.build(keys, epoch=name, labels=labels, key=bytes.fromhex(key["key"]),
                                        dataset_version=str(meta.version))
        cache[cache_key] = {"provider": provider, "version": stamp, "keys": set(keys), "epoch": epoch}
        runtime.audit.append("lookup.build", dataset=dataset, requester=requester, counts={"rows": len(keys)})
        return provider


def evaluator(runtime, dataset: str, requester: str, epoch_name: str) -> tuple[int, LookupProvider]:
    """(key epoch, an evaluator under its key) for the filter epoch the requester signed;
    FAILED_PRECONDITION once that epoch's key is gone (rotated and wiped)."""
    m = _EPOCH_RE.match(epoch_name)
    if m is None:
        raise InvalidInput("the lookup binding names no key epoch of this node")
    epoch, key_id = int(m.group(1)), m.group(2)
    with runtime.lookup_lock:
        _, live = _live_keys(runtime, dataset, requester)
    key = live.get(epoch)
    if key is None or key["id"] != key_id:
        raise FailedPrecondition("the lookup filter's key epoch has ended (keys rotate every "
                                 f"{runtime.config.lookup_epoch_days:g} days); run the lookup again for the current filter")
    return epoch, LookupProvider(epoch=epoch_name, key=bytes.fromhex(key["key"]))
